// Upload with a progress bar; without JavaScript the form posts normally.
(function () {
  "use strict";
  const form = document.getElementById("upload-form");
  if (!form || !window.FormData) return;
  const bar = document.getElementById("upload-progress");
  const text = document.getElementById("upload-text");
  const button = document.getElementById("submit");

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const n = data.getAll("files").filter((f) => f.name).length;
    if (!n) { text.textContent = "Choose files, a folder or a zip first."; return; }
    const xhr = new XMLHttpRequest();
    xhr.open("POST", form.action);
    xhr.upload.addEventListener("progress", (e) => {
      if (e.lengthComputable) bar.value = Math.round(100 * e.loaded / e.total);
    });
    xhr.addEventListener("load", () => {
      if (xhr.status >= 200 && xhr.status < 300) { window.location.assign(xhr.responseURL); return; }
      const page = new DOMParser().parseFromString(xhr.responseText, "text/html");
      const error = page.getElementById("error");
      text.textContent = error ? error.textContent : "Upload failed (HTTP " + xhr.status + ").";
      button.disabled = false;
    });
    xhr.addEventListener("error", () => { text.textContent = "Upload failed: the server did not answer."; button.disabled = false; });
    bar.hidden = false;
    button.disabled = true;
    text.textContent = "Uploading " + n + " file(s)…";
    xhr.send(data);
  });
})();
