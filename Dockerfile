# A slim, non-root image that runs the stillframe API on port 8000.
FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
RUN python -m venv /opt/stillframe \
 && /opt/stillframe/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/stillframe/bin/pip install --no-cache-dir .

FROM python:3.12-slim
RUN useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin stillframe \
 && mkdir -p /media /data && chown stillframe /data
COPY --from=build /opt/stillframe /opt/stillframe
ENV PATH=/opt/stillframe/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    STILLFRAME_MEDIA_ROOT=/media \
    STILLFRAME_DATA_DIR=/data
USER stillframe
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=3)" || exit 1
CMD ["stillframe", "serve", "--host", "0.0.0.0", "--port", "8000"]
