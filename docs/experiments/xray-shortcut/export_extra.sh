#!/bin/bash
# Export the extra public X-ray folders from the fetched snapshots (outside every git repo; never commit).
set -e
export_dir() { # git_dir tree_path out_dir pattern
  mkdir -p "$3"
  git -C "$1" ls-tree -r --name-only HEAD -- "$2" | grep -E "$4" | while IFS= read -r f; do
    git -C "$1" show "HEAD:$f" > "$3/$(basename "$f")"
  done
}
export_dir /work/.mirror/pi-null-mezon+OpenIST/repo/.git "Datasets/Chest_x-ray" openist '\.jpg$'
export_dir /work/.mirror/muhammedtalo+COVID-19/repo "X-Ray Image DataSet/No_findings" nih-normal '\.png$'
export_dir /work/.mirror/muhammedtalo+COVID-19/repo "X-Ray Image DataSet/Pneumonia" nih-pneumonia '\.png$'
git -C /work/.mirror/pi-null-mezon+OpenIST/repo/.git rev-parse HEAD > openist.commit
git -C /work/.mirror/muhammedtalo+COVID-19/repo rev-parse HEAD > nih.commit
