# A local stand-in for the official postgres image, for machines with no image registry (tests and
# the README's "No image registry"): Debian's PostgreSQL 15 (ROOTFS, made by build-bases.sh) and an
# entrypoint that honours what docker-compose.yml relies on: POSTGRES_USER, POSTGRES_PASSWORD,
# POSTGRES_DB, /docker-entrypoint-initdb.d, pg_isready on the PATH. The official image stays the
# default (POSTGRES_IMAGE).
ARG ROOTFS=sweep-local/postgres:15-bookworm-rootfs
FROM ${ROOTFS}
ENV PGDATA=/var/lib/postgresql/data
COPY postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
RUN mkdir -p /docker-entrypoint-initdb.d "$PGDATA" && chown postgres:postgres "$PGDATA" \
    && chmod 755 /usr/local/bin/docker-entrypoint.sh
VOLUME /var/lib/postgresql/data
# SIGINT: PostgreSQL's fast shutdown, as the official image
STOPSIGNAL SIGINT
EXPOSE 5432
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["postgres"]
