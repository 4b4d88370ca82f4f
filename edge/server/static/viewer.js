// Slice viewer: a slider (and the arrow keys) over the study's slices, lung window.
(function () {
  "use strict";
  const viewer = document.getElementById("viewer");
  if (!viewer) return;
  const range = document.getElementById("viewer-range");
  const image = document.getElementById("viewer-image");
  const label = document.getElementById("viewer-label");
  const count = Number(viewer.dataset.count);
  const used = new Set(JSON.parse(viewer.dataset.used));

  function show(i) {
    i = Math.max(0, Math.min(count - 1, i));
    range.value = String(i);
    image.src = viewer.dataset.base + i + ".png";
    label.textContent = "slice " + i + " of " + count + (used.has(i) ? " (used)" : " (not used)");
  }
  range.addEventListener("input", () => show(Number(range.value)));
  document.addEventListener("keydown", (e) => {
    if (e.key === "ArrowLeft") show(Number(range.value) - 1);
    if (e.key === "ArrowRight") show(Number(range.value) + 1);
  });
  show(Number(range.value));
})();
