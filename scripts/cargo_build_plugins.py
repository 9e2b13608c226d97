#!/usr/bin/env python3
"""Called by meson: build plugin crates with cargo and copy their cdylibs to meson's outdir."""

import argparse
import json
import pathlib
import shutil
import subprocess
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--profile", choices=["debug", "release"], required=True)
    parser.add_argument("--outdir", required=True)
    parser.add_argument("crates", nargs="+", help="crate directories relative to the workspace")
    args = parser.parse_args()

    packages, libs = [], []
    for crate in args.crates:
        manifest = tomllib.loads((ROOT / crate / "Cargo.toml").read_text())
        packages.append(manifest["package"]["name"])
        libs.append(manifest["lib"]["name"])

    cmd = ["cargo", "build", "--manifest-path", str(ROOT / "Cargo.toml")]
    if args.profile == "release":
        cmd.append("--release")
    for package in packages:
        cmd += ["-p", package]
    subprocess.run(cmd, check=True)

    metadata = json.loads(
        subprocess.run(
            ["cargo", "metadata", "--format-version", "1", "--no-deps",
             "--manifest-path", str(ROOT / "Cargo.toml")],
            check=True, capture_output=True, text=True,
        ).stdout
    )
    target_dir = pathlib.Path(metadata["target_directory"]) / args.profile
    for lib in libs:
        shutil.copy2(target_dir / f"lib{lib}.so", pathlib.Path(args.outdir) / f"lib{lib}.so")
    return 0


if __name__ == "__main__":
    sys.exit(main())
