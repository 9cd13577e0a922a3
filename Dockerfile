# cartox: CAR-T toxicity decision support (Flask app served by gunicorn).
#   docker build -t cartox .
#   docker run --rm -p 8080:8080 cartox        # then: curl http://127.0.0.1:8080/healthz
# tests/deploy/test_dockerfile.py checks this file without docker (same install and CMD in a virtualenv).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CARTOX_HOST=0.0.0.0 \
    CARTOX_PORT=8080

# Install the project as a wheel built from pyproject.toml (rules/ and fhir_profiles/ are force-included
# into the package as service/rules and service/fhir_profiles); the sources are removed afterwards.
COPY pyproject.toml README.md /tmp/cartox/
COPY service/ /tmp/cartox/service/
COPY rules/ /tmp/cartox/rules/
COPY fhir_profiles/ /tmp/cartox/fhir_profiles/
RUN pip install --no-cache-dir /tmp/cartox && rm -rf /tmp/cartox

RUN useradd --create-home --uid 10001 --user-group cartox
USER cartox
WORKDIR /home/cartox

EXPOSE 8080

HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=3).status == 200 else 1)"]

# The app factory builds the engine (rules compiled) in each worker before it serves requests.
CMD ["gunicorn", "--bind", "0.0.0.0:8080", "--workers", "2", "--timeout", "60", "--access-logfile", "-", "service.app:create_app()"]
