FROM python:3.12-slim
WORKDIR /srv/stockwire
# the pinned versions first (requirements/README.md): this layer is rebuilt only when they change
COPY requirements/prod.lock requirements/prod.lock
RUN pip install --no-cache-dir --require-hashes -r requirements/prod.lock
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY alembic ./alembic
RUN pip install --no-cache-dir --no-deps -e .
EXPOSE 8000
CMD ["stockwire", "serve", "--host", "0.0.0.0", "--port", "8000"]
