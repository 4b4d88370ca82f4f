// Result viewer: every slice read (or the one radiograph), window presets when the study had full HU
// range, the heatmap overlay of the slices that have one (on/off, opacity), keyboard and wheel
// navigation, and side by side (key S): the slice without the heatmap beside the same slice with it,
// in the same window, scrolling together; slices are named by InstanceNumber and z, as PACS shows
// them. No libraries.
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
  const panes = document.getElementById("viewer-panes");
  const plainPane = document.getElementById("pane-plain");
  const plain = document.getElementById("viewer-plain");
  const side = document.getElementById("side-toggle");
  const captions = { plain: document.getElementById("pane-plain-label"), overlay: document.getElementById("pane-overlay-label") };
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
    plain.src = source(index);
    const heat = data.overlays[String(index)];
    layer.hidden = !(heat && (toggle.checked || side.checked));  // side by side: the right pane always has it
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
    const name = data.count === 1 ? "the whole image" : "slice " + data.numbers[index];
    captions.plain.textContent = name + " · without heatmap";
    captions.overlay.textContent = name + (heat ? " · with heatmap" : " · no heatmap on this slice");
    for (const c of Object.values(captions)) c.dataset.instance = String(data.numbers[index]);
    viewer.dataset.index = String(index);
  }

  function sideBySide(on) {
    side.checked = on;
    plainPane.hidden = !on;
    panes.classList.toggle("side", on);
    show(index);
  }

  if (range) range.addEventListener("input", () => show(Number(range.value)));
  toggle.addEventListener("change", () => show(index));
  side.addEventListener("change", () => sideBySide(side.checked));
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
    else if ((e.key === "s" || e.key === "S") && !e.ctrlKey && !e.metaKey && !e.altKey) { sideBySide(!side.checked); e.preventDefault(); }
  });
  for (const pane of [stage, document.getElementById("viewer-plain-stage")]) {
    pane.addEventListener("wheel", (e) => {
      if (data.count < 2) return;
      e.preventDefault();
      show(index + (e.deltaY > 0 ? 1 : -1));
    }, { passive: false });
  }
  viewer.dataset.window = windowName;
  show(index);
})();
