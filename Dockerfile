# syntax=docker/dockerfile:1
# pgward: multi-stage build, small non-root runtime image, config mounted.
#   docker build -t pgward .
#   docker run -v $PWD/config/pgward.toml:/etc/pgward/pgward.toml:ro -p 6432:6432 -p 9187:9187 pgward

FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY benches ./benches
COPY src ./src
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin pgward \
    && cp target/release/pgward /pgward \
    && strip /pgward

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin pgward
COPY --from=build /pgward /usr/local/bin/pgward
COPY config/pgward.toml /etc/pgward/pgward.toml
USER 10001:10001
# 6432: PostgreSQL clients. 9187: admin HTTP (/metrics, /healthz, /readyz, /policy).
EXPOSE 6432 9187
ENV PGWARD_CONFIG=/etc/pgward/pgward.toml
# In a container pgward must listen on all interfaces: mount a config with
#   [listen] addresses = ["0.0.0.0:6432"]   and   [admin] listen = "0.0.0.0:9187"
# (deploy/docker-compose.yml and deploy/k8s/configmap.yaml do).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/pgward"]
CMD ["run"]
