# Builds the single `sluice` binary; the role is the container's command.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* && useradd --system --home /var/lib/sluice sluice \
    && mkdir -p /var/lib/sluice && chown sluice /var/lib/sluice
COPY --from=build /src/target/release/sluice /usr/local/bin/sluice
USER sluice
ENTRYPOINT ["/usr/local/bin/sluice"]
CMD ["standalone"]
