# syntax=docker/dockerfile:1
# Multi-stage build: compile in the Rust image, run from a small Debian
# image as a non-root user, with the database on a volume.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
# The workspace member bench/ (the benchmark) must be present for cargo to
# load the workspace; only chatd is built.
COPY bench ./bench
COPY src ./src
RUN cargo build --release --locked --bin chatd \
 && strip target/release/chatd

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin chatd \
 && mkdir -p /data \
 && chown chatd:chatd /data
COPY --from=build /src/target/release/chatd /usr/local/bin/chatd
USER chatd
WORKDIR /data
ENV CHATD_LISTEN=0.0.0.0:8080 \
    CHATD_DATABASE_URL=sqlite:///data/chatd.db \
    CHATD_LOG_FORMAT=json
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=3s --start-period=5s --retries=3 \
  CMD ["chatd", "healthcheck", "--url", "http://127.0.0.1:8080/healthz"]
ENTRYPOINT ["chatd"]
CMD ["serve"]
