# syntax=docker/dockerfile:1
# The devset image: one binary, `devset`, whose subcommands are the chart's two containers
# (`controller` and `api`). Build: docker build -t devset/devset-operator:0.1.0 .
#
# Stage 1 builds with the Rust toolchain; `cargo build --release` is the only build step.
# librdkafka is compiled from source by rdkafka-sys (a C toolchain) and linked statically, as
# is SQLite; the binary links OpenSSL (libssl3) and zlib dynamically (`ldd target/release/devset`).
FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake g++ make perl python3 libssl-dev zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY examples ./examples
# The web page's built bundle, embedded in the binary (its sources in web/ are not needed).
COPY web/dist ./web/dist
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin devset \
 && cp target/release/devset /devset

# Stage 2: distroless "cc" (glibc, libgcc, libssl3, CA certificates; no shell, no package
# manager), as the non-root user 65532, plus zlib from the build stage.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /usr/lib/x86_64-linux-gnu/libz.so.1 /usr/lib/x86_64-linux-gnu/
COPY --from=build /devset /usr/local/bin/devset
USER 65532:65532
# The event store's volume (the chart mounts an emptyDir or a PVC here).
VOLUME /data
EXPOSE 8080 8082
ENTRYPOINT ["/usr/local/bin/devset"]
CMD ["controller"]
