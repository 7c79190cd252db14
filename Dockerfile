# tandem's three servers in one image; the entrypoint is the embedded gateway, the split roles
# run with `--entrypoint /opt/tandem/bin/tandem-retrieval` (or `tandem-ranking`), or the
# chart's `command`. The catalog and models are not in the image: mount them at /data.
#
#   docker build -t tandem:cpu .
#   docker build --build-arg VARIANT=gpu -t tandem:gpu .    # onnxruntime-gpu, --features cuda
#   docker run --rm -p 50051:50051 -v "$PWD/data/demo:/data:ro" tandem:cpu
#   docker run --rm --gpus all -p 50051:50051 -v "$PWD/data/demo:/data:ro" tandem:gpu \
#       --execution-provider cuda
#
# The build stage's work is .ci/image-rootfs.sh, which `make test` also runs and starts the
# gateway from (.ci/test_image.py): no container engine is needed to check the layout.
ARG VARIANT=cpu

FROM rust:1.95-bookworm AS build
ARG VARIANT
# python3-venv: the throw-away venv that fetches ONNX Runtime's pinned wheel. Debian's
# package versions move with point releases; the base image's tag is the pin.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-venv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN .ci/image-rootfs.sh --variant "${VARIANT}" /rootfs

FROM debian:bookworm-slim
ARG VARIANT
# ca-certificates: the system roots that verify an https:// OTLP collector when no
# OTEL_EXPORTER_OTLP_CERTIFICATE names its CA.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
LABEL org.opencontainers.image.title="tandem" \
      org.opencontainers.image.description="Real-time recommendations over gRPC: HNSW retrieval, ONNX ranking, one gateway" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.tandem.variant="${VARIANT}"
COPY --from=build /rootfs/opt/ /opt/
COPY --from=build --chown=10001:10001 /rootfs/var/lib/tandem/ /var/lib/tandem/
# Every path the servers write is under /var/lib/tandem: the root filesystem can be read-only.
ENV ORT_DYLIB_PATH=/opt/tandem/lib/libonnxruntime.so \
    LD_LIBRARY_PATH=/opt/tandem/lib \
    TANDEM_LISTEN=0.0.0.0:50051 \
    TANDEM_ITEMS=/data/items.parquet \
    TANDEM_MODEL_DIR=/data/models/ranker \
    TANDEM_STATE_DIR=/var/lib/tandem/state \
    TANDEM_EVENT_LOG_DIR=/var/lib/tandem/events \
    TANDEM_SERVED_LOG_DIR=/var/lib/tandem/served
USER 10001:10001
VOLUME ["/var/lib/tandem"]
EXPOSE 50051
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
    CMD ["/opt/tandem/bin/tandem-healthcheck"]
ENTRYPOINT ["/opt/tandem/bin/tandem-gateway"]
