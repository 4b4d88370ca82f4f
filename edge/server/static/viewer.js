// Result viewer: every slice read (or the one radiograph), window presets when the study had full HU
// range, the heatmap overlay of the slices that have one (on/off, opacity), keyboard and wheel
// navigation; slices are named by InstanceNumber and z, as PACS shows them. No libraries.
(function () {
  "use strict";
  const viewer = document.getElementById("viewer");
  if (!viewer) return;
  const data = JSON.parse(viewer.dataset.viewer);
  const base = viewer.dataset.base;
  const range = document.getElementById("viewer-range");
  const image = document.getElementById("viewer-image");
  const layer = document.getElementById("viewer-overlay");
  const label = document.getElementById("viewer-label");
  const toggle = document.getElementById("overlay-toggle");
  const opacity = document.getElementById("overlay-opacity");
  const note = document.getElementById("overlay-note");
  const stage = document.getElementById("viewer-stage");
  const used = new Set(data.used);
  let index = Number(viewer.dataset.start) || 0;
  let windowName = "lung";

  function source(i) {
    return base + "/slices/" + (windowName === "lung" ? "" : windowName + "/") + i + ".png";
  }

  function show(i) {
    index = Math.max(0, Math.min(data.count - 1, i));
    if (range) range.value = String(index);
    image.src = source(index);
    const heat = data.overlays[String(index)];
    layer.hidden = !(heat && toggle.checked);
    if (heat) layer.src = base + "/heatmaps/" + heat + "-map.png";
    layer.style.opacity = String(Number(opacity.value) / 100);
    note.textContent = heat ? "" : (Object.keys(data.overlays).length ? "no heatmap on this slice" : "no heatmaps");
    if (data.count === 1) {
      label.textContent = "the whole image";
    } else {
      const z = data.z[index];
      label.textContent = "slice " + data.numbers[index] + (z === null || z === undefined ? "" : " · z " + z.toFixed(1) + " mm") +
        " · " + (index + 1) + " of " + data.count + " · " + (used.has(index) ? "used" : "not used") + (heat ? " · heatmap" : "");
    }
    viewer.dataset.index = String(index);
  }

  if (range) range.addEventListener("input", () => show(Number(range.value)));
  toggle.addEventListener("change", () => show(index));
  opacity.addEventListener("input", () => { layer.style.opacity = String(Number(opacity.value) / 100); });
  for (const button of viewer.querySelectorAll("button.window")) {
    button.addEventListener("click", () => {
      windowName = button.dataset.window;
      for (const b of viewer.querySelectorAll("button.window")) b.classList.toggle("active", b === button);
      viewer.dataset.window = windowName;
      show(index);
    });
  }
  for (const button of viewer.querySelectorAll("button.jump")) {
    button.addEventListener("click", () => show(Number(button.dataset.index)));
  }
  const steps = { ArrowLeft: -1, ArrowUp: -1, ArrowRight: 1, ArrowDown: 1, PageUp: -10, PageDown: 10 };
  document.addEventListener("keydown", (e) => {
    if (e.target instanceof HTMLInputElement && e.target !== range) return;
    if (e.key in steps) { show(index + steps[e.key]); e.preventDefault(); }
    else if (e.key === "Home") { show(0); e.preventDefault(); }
    else if (e.key === "End") { show(data.count - 1); e.preventDefault(); }
  });
  stage.addEventListener("wheel", (e) => {
    if (data.count < 2) return;
    e.preventDefault();
    show(index + (e.deltaY > 0 ? 1 : -1));
  }, { passive: false });
  viewer.dataset.window = windowName;
  show(index);
})();
