# syntax=docker/dockerfile:1
#
# tiergate container image.
#
#   docker build -t tiergate:dev .
#   docker run --rm -p 8080:8080 -p 9901:9901 -e JWT_SECRET_KEY=change-me tiergate:dev
#
# Stages: chef (toolchain + cargo-chef) -> planner (recipe.json from the manifests)
# -> builder (dependencies cooked in their own cached layer, then the release build)
# -> runtime (distroless, non-root, the binary and a default config only).
#
# Runtime contract:
#   /usr/local/bin/tiergate        the binary (ENTRYPOINT); it handles SIGTERM itself and can be PID 1
#   /etc/tiergate/config.toml      default config (the repo's config.toml: in-memory store,
#                                  upstream http://127.0.0.1:8000). Mount a directory over
#                                  /etc/tiergate (e.g. a ConfigMap, no subPath) to replace it;
#                                  changes to the directory are hot-reloaded.
#   JWT_SECRET_KEY                 HMAC secret (env var named by identity.jwt_secret_env); never in the file
#   REDIS_URL                      overrides storage.url when storage.backend = "redis"
#   8080/tcp                       data plane (server.listen)
#   9901/tcp                       admin: /metrics, /healthz, /readyz (server.admin_listen)

ARG RUST_VERSION=1.95
ARG CARGO_CHEF_VERSION=0.1.77

FROM rust:${RUST_VERSION}-bookworm AS chef
ARG CARGO_CHEF_VERSION
# rust:*-bookworm already ships gcc, which is all the `ring` crate needs.
RUN cargo install cargo-chef --locked --version "${CARGO_CHEF_VERSION}"
WORKDIR /src

FROM chef AS planner
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
# Dependencies only: this layer is reused until Cargo.toml / Cargo.lock change.
RUN cargo chef cook --release --locked --recipe-path recipe.json
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
# config.toml is compiled in (include_str! in src/config.rs and src/demo.rs).
COPY config.toml ./config.toml
RUN cargo build --release --locked --bin tiergate \
    && install -D -m 0755 target/release/tiergate /out/tiergate

FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
LABEL org.opencontainers.image.title="tiergate" \
      org.opencontainers.image.description="Tier-aware rate-limiting reverse proxy sidecar" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/tiergate /usr/local/bin/tiergate
COPY --chown=0:0 --chmod=0644 config.toml /etc/tiergate/config.toml
ENV TIERGATE_CONFIG=/etc/tiergate/config.toml
USER 65532:65532
EXPOSE 8080 9901
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/tiergate"]
CMD ["--config", "/etc/tiergate/config.toml"]
