"""OpenIST normal adult PA radiographs with their lung masks (pi-null-mezon/OpenIST Datasets/Chest_x-ray,
*.jpg + *@.png) as ctedge train-unet pairs at 128 x 128: each image as is, and padded with black by
20% and 40% of its size on every side (the OpenIST films are cut tight to the thorax; the other
collections show more around it)."""
import subprocess
import os
from pathlib import Path

import cv2
import numpy as np

GIT = "/work/.mirror/pi-null-mezon+OpenIST/repo/.git"
OUT = Path(os.environ.get("XRAY_WORK", "/work/data/xraytrain")) / "lungseg" / "pairs"
SIZE = 128


def blob(path: str) -> np.ndarray:
    data = subprocess.run(["git", "-C", GIT, "show", f"HEAD:{path}"], capture_output=True, check=True).stdout
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)


def main():
    (OUT / "images").mkdir(parents=True, exist_ok=True)
    (OUT / "masks").mkdir(parents=True, exist_ok=True)
    names = subprocess.run(["git", "-C", GIT, "ls-tree", "-r", "--name-only", "HEAD", "--", "Datasets/Chest_x-ray"],
                           capture_output=True, text=True, check=True).stdout.split("\n")
    n = 0
    for jpg in (x for x in names if x.endswith(".jpg")):
        mask_path = jpg[:-4] + "@.png"
        if mask_path not in names:
            continue
        image, mask = blob(jpg), blob(mask_path)
        if mask.shape != image.shape:
            mask = cv2.resize(mask, image.shape[::-1], interpolation=cv2.INTER_NEAREST)
        stem = Path(jpg).stem
        for k, pad in enumerate((0.0, 0.2, 0.4)):
            py, px = int(pad * image.shape[0]), int(pad * image.shape[1])
            im = cv2.copyMakeBorder(image, py, py, px, px, cv2.BORDER_CONSTANT, value=0)
            ma = cv2.copyMakeBorder(mask, py, py, px, px, cv2.BORDER_CONSTANT, value=0)
            cv2.imwrite(str(OUT / "images" / f"{stem}_{k}.png"), cv2.resize(im, (SIZE, SIZE), interpolation=cv2.INTER_AREA))
            cv2.imwrite(str(OUT / "masks" / f"{stem}_{k}.png"),
                        (cv2.resize(ma, (SIZE, SIZE), interpolation=cv2.INTER_AREA) > 127).astype(np.uint8) * 255)
        n += 1
    print(n, "images,", 3 * n, "pairs")


if __name__ == "__main__":
    main()
