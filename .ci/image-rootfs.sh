#!/usr/bin/env bash
# The container image's filesystem, built into DEST: the Dockerfile's build stage runs this,
# and `make test` runs it too (.ci/test-image.sh) to start the servers from the same layout.
#
#   .ci/image-rootfs.sh [--variant cpu|gpu] [--binaries DIR] DEST
#
# DEST/opt/tandem/bin   tandem-gateway, tandem-retrieval, tandem-ranking, tandem-healthcheck
# DEST/opt/tandem/lib   libonnxruntime.so (from the pinned PyPI wheel; gpu: onnxruntime-gpu and
#                       the CUDA/cuDNN libraries of its nvidia-* wheels)
# DEST/var/lib/tandem   the one writable place: index snapshots, event log, served log
#
# Without --binaries it builds them (release, --locked; gpu: --features cuda). Nothing is
# downloaded except crates and wheels from their registries.
set -euo pipefail

variant=cpu
binaries=""
while [[ $# -gt 1 ]]; do
    case $1 in
        --variant) variant=$2; shift 2 ;;
        --binaries) binaries=$2; shift 2 ;;
        *) echo "image-rootfs.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
[[ $# -eq 1 ]] || { echo "usage: image-rootfs.sh [--variant cpu|gpu] [--binaries DIR] DEST" >&2; exit 2; }
dest=$1
root=$(cd "$(dirname "$0")/.." && pwd)

case $variant in
    cpu) requirements=$root/models/requirements.txt; features=() ;;
    gpu) requirements=$root/models/requirements-gpu.txt
         features=(--features tandem-gateway/cuda,tandem-ranking-service/cuda) ;;
    *) echo "image-rootfs.sh: --variant must be cpu or gpu, not '$variant'" >&2; exit 2 ;;
esac

if [[ -z $binaries ]]; then
    (cd "$root" && cargo build --release --locked --bins "${features[@]}")
    binaries=$root/target/release
fi

prefix=$dest/opt/tandem
mkdir -p "$prefix/bin" "$prefix/lib" "$dest/var/lib/tandem"
for binary in tandem-gateway tandem-retrieval tandem-ranking tandem-healthcheck; do
    install -m 0755 "$binaries/$binary" "$prefix/bin/$binary"
done

# ONNX Runtime: the same pin as `make run` (CPU) or `make gpu-venv` (CUDA), in a throw-away
# venv; only its shared libraries are kept.
pin=$(grep -E '^onnxruntime(-gpu)?(\[[^]]*\])?==' "$requirements")
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
python3 -m venv "$scratch/venv"
if [[ $variant == cpu ]]; then
    "$scratch/venv/bin/pip" install --quiet --no-deps "$pin"
else
    "$scratch/venv/bin/pip" install --quiet "$pin"
fi
site=$("$scratch/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
cp -L "$site"/onnxruntime/capi/lib*.so* "$prefix/lib/"
if [[ $variant == gpu ]]; then
    cp -L "$site"/nvidia/*/lib/lib*.so* "$prefix/lib/"
fi
# A name that does not change with the pin: ORT_DYLIB_PATH=/opt/tandem/lib/libonnxruntime.so
library=$(cd "$prefix/lib" && ls libonnxruntime.so.* | head -n1)
ln -sf "$library" "$prefix/lib/libonnxruntime.so"
echo "image-rootfs.sh: $variant layout in $dest ($(du -sh "$dest" | cut -f1)); ONNX Runtime $library"
