# pymaster on Debian slim: `docker build -t pymaster .`, then
# `docker run --rm -p 8000:8000 -p 9191:9191 pymaster` serves the demo app on :8000 and the
# stats JSON and Prometheus /metrics on :9191. For an app of your own:
#   FROM pymaster
#   COPY --chown=root:root . /srv/app      (app.ini beside the code, or pass options)
#   RUN /opt/pymaster/bin/pip install -r /srv/app/requirements.txt
FROM debian:bookworm-slim

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv media-types \
    && rm -rf /var/lib/apt/lists/*

# pymaster in its own venv (etc/ is needed: the package ships its files from there)
COPY pyproject.toml README.md LICENSE /tmp/src/
COPY etc /tmp/src/etc
COPY pymaster /tmp/src/pymaster
RUN python3 -m venv /opt/pymaster \
    && /opt/pymaster/bin/pip install --no-cache-dir /tmp/src jinja2 \
    && rm -rf /tmp/src
ENV PATH=/opt/pymaster/bin:$PATH PYTHONUNBUFFERED=1

# the demo app (jinja2 above is for it); owned by root, read by the unprivileged user
COPY examples/app.wsgi /srv/app/app.wsgi
COPY examples/static /srv/app/static
COPY docker/app.ini /srv/app/app.ini

RUN useradd --system --uid 10001 --no-create-home --home-dir /srv/app pymaster
USER 10001:10001
WORKDIR /srv/app
EXPOSE 8000 9191

# pymaster is PID 1: it reaps orphans itself, and its SIGTERM is a graceful shutdown
# (workers finish their requests, queued connections are served, exit 0). That is Docker's
# default stop signal, so `docker stop` is graceful; uWSGI images set STOPSIGNAL SIGQUIT or
# SIGINT because uWSGI's SIGTERM is a brutal reload, and pymaster's SIGINT/SIGQUIT stop at
# once. Give long requests time: `docker stop -t 70` (Docker's default is 10 s, then KILL).
STOPSIGNAL SIGTERM
ENTRYPOINT ["pymaster"]
CMD ["--ini", "/srv/app/app.ini"]
