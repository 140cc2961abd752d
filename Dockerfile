# cbmir service image. GPU-capable base; with no GPU visible it runs on the CPU.
# Not exercised by CI (no Docker engine runs on the project's CI machines).
FROM nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    CBMIR_DATA_DIR=/data CBMIR_DEVICE=auto
RUN apt-get update && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
    && rm -rf /var/lib/apt/lists/* && python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /srv/cbmir

# Dependencies in their own layer: only pyproject.toml is needed to resolve them. [pg]: the
# PostgreSQL driver, so the image can also run as a replica (CBMIR_DATABASE_URL).
COPY pyproject.toml README.md ./
RUN mkdir -p app models index && touch app/__init__.py models/__init__.py index/__init__.py \
    && pip install '.[pg]' && pip uninstall -y cbmir

COPY app ./app
COPY models ./models
COPY index ./index
RUN pip install --no-deps -e .

VOLUME /data
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health')"
CMD ["cbmir", "serve", "--host", "0.0.0.0", "--port", "8000"]
