FROM python:3.12-slim
WORKDIR /srv/stockwire
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# the pinned versions first (requirements/README.md): this layer is rebuilt only when they change
COPY requirements/prod.lock requirements/prod.lock
RUN pip install --no-cache-dir --require-hashes -r requirements/prod.lock
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY alembic ./alembic
# editable: the migrations stay in ./alembic beside the code (app/db/migrate.py finds them there)
RUN pip install --no-cache-dir --no-deps -e . \
 && useradd --system --uid 10001 --no-create-home --home-dir /srv/stockwire stockwire
# never root: a compromised process cannot rewrite the installed code or the image
USER stockwire
EXPOSE 8000
# readiness, not liveness: 200 while the database answers (a Redis outage only degrades push, see README)
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2).status != 200)"]
CMD ["stockwire", "serve", "--host", "0.0.0.0", "--port", "8000"]
