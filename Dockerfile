FROM python:3.12-slim
WORKDIR /srv/stockwire
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY alembic ./alembic
RUN pip install --no-cache-dir -e .
EXPOSE 8000
CMD ["stockwire", "serve", "--host", "0.0.0.0", "--port", "8000"]
