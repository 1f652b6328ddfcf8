"""Secure transport on real Apache Kafka: SCRAM-SHA-512 over TLS and mutual TLS, configured only through DFP_KAFKA_*.

One secured broker for the module (PLAINTEXT for the test's own clients, SASL_SSL with a SCRAM user, SSL that
requires a client certificate), with a throwaway CA made by `cryptography`. Good credentials connect and score;
a wrong password, an untrusted CA or a client certificate from another CA leave the processor alive but unready
(/readyz 503) with librdkafka's reason in /health (`kafka.last_error`) and in the log, without a log flood, and the
password is nowhere in the log, /health or /metrics.
"""

from __future__ import annotations

import datetime
import ipaddress
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from devtools.broker import free_port
from tests.brokers import KafkaUnavailable, TestKafka, TopicFactory, check_tools, fetch_kafka_jars
from tests.conftest import kafka_unavailable
from tests.corpus import jpeg_bytes
from tests.integration.conftest import ProcessorFactory
from tests.procs import ProcessorProc, event_id_of, image_event, processor_env, produce_values, read_until_ids, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

USER, PASSWORD = "dfp-processor", "Sup3r-s3cret-scram-pw"
WRONG_PASSWORD = "Wr0ng-pw-that-must-not-leak"


# --- a throwaway PKI --------------------------------------------------------------------------------------------


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate | None,
          issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool = False) -> x509.Certificate:  # fmt: skip
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:  # librdkafka checks the broker's name against the SAN
        san = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())  # fmt: skip


@dataclass(frozen=True)
class SecuredKafka:
    """The module's broker: listener addresses and the PEM files a client may be given."""

    bootstrap: str  # PLAINTEXT, for the test's own clients
    sasl_ssl: str
    mtls: str
    ca: Path
    rogue_ca: Path
    client_cert: Path
    client_key: Path
    rogue_client_cert: Path
    rogue_client_key: Path


def _make_pki(d: Path) -> dict[str, Path]:
    ca_key, rogue_key = _key(), _key()
    ca = _cert("dfp-test-ca", ca_key, None, ca_key, ca=True)
    rogue = _cert("rogue-ca", rogue_key, None, rogue_key, ca=True)
    server_key, client_key, rogue_client_key = _key(), _key(), _key()
    files = {
        "ca": _pem(ca),
        "rogue_ca": _pem(rogue),
        # Kafka's PEM keystore: PKCS#8 key, then the certificate chain.
        "server": _key_pem(server_key) + _pem(_cert("localhost", server_key, ca, ca_key)) + _pem(ca),
        "client_cert": _pem(_cert("dfp-processor", client_key, ca, ca_key)),
        "client_key": _key_pem(client_key),
        "rogue_client_cert": _pem(_cert("dfp-processor", rogue_client_key, rogue, rogue_key)),
        "rogue_client_key": _key_pem(rogue_client_key),
    }
    paths = {}
    for name, data in files.items():
        paths[name] = d / f"{name}.pem"
        paths[name].write_bytes(data)
    return paths


@pytest.fixture(scope="module")
def secured_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredKafka]:
    """A second one-node Kafka with SASL_SSL (SCRAM-SHA-512) and mTLS listeners, for this module only."""
    try:
        check_tools()
        libs = fetch_kafka_jars()
    except KafkaUnavailable as exc:
        kafka_unavailable(str(exc))
    workdir = tmp_path_factory.mktemp("secured-kafka")
    pki = _make_pki(workdir)
    sasl_port, ssl_port = free_port(), free_port()

    def listeners(k: TestKafka) -> str:
        where = (f"PLAINTEXT://127.0.0.1:{k.port},SASL_SSL://127.0.0.1:{sasl_port},SSL://127.0.0.1:{ssl_port},"
                 f"CONTROLLER://127.0.0.1:{k.controller_port}")  # fmt: skip
        return f"""
listeners={where}
advertised.listeners={where}
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL,SSL:SSL
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
ssl.keystore.type=PEM
ssl.keystore.location={pki["server"]}
ssl.truststore.type=PEM
ssl.truststore.location={pki["ca"]}
listener.name.ssl.ssl.client.auth=required
"""

    kafka = TestKafka(libs, workdir, extra_properties=listeners,
                      format_args=["--add-scram", f"SCRAM-SHA-512=[name={USER},password={PASSWORD}]"])  # fmt: skip
    kafka.start()
    try:
        yield SecuredKafka(kafka.bootstrap, f"127.0.0.1:{sasl_port}", f"127.0.0.1:{ssl_port}", pki["ca"],
                           pki["rogue_ca"], pki["client_cert"], pki["client_key"], pki["rogue_client_cert"],
                           pki["rogue_client_key"])  # fmt: skip
    finally:
        kafka.stop()


def scram(kafka: SecuredKafka, password: str = PASSWORD, ca: Path | None = None) -> dict[str, str]:
    """Processor settings for SCRAM-SHA-512 over TLS (what a Kubernetes Secret would put in DFP_KAFKA_*)."""
    return {"BOOTSTRAP_SERVERS": kafka.sasl_ssl, "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512", "KAFKA_SASL_USERNAME": USER, "KAFKA_SASL_PASSWORD": password,
            "KAFKA_SSL_CA_LOCATION": str(ca or kafka.ca)}  # fmt: skip


def mtls(kafka: SecuredKafka, cert: Path | None = None, key: Path | None = None) -> dict[str, str]:
    """Processor settings for mutual TLS with a client certificate."""
    return {"BOOTSTRAP_SERVERS": kafka.mtls, "KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CA_LOCATION": str(kafka.ca),
            "KAFKA_SSL_CERTIFICATE_LOCATION": str(cert or kafka.client_cert),
            "KAFKA_SSL_KEY_LOCATION": str(key or kafka.client_key)}  # fmt: skip


def exposed(proc: ProcessorProc) -> str:
    """Everything the processor shows: its log, /health and /metrics."""
    return proc.log_path.read_text() + proc.get("/health")[1].decode() + proc.get("/metrics")[1].decode()


@pytest.mark.parametrize("transport", ["scram-sha-512-over-tls", "mtls"])
def test_secured_processor_connects_scores_and_never_shows_the_password(
    secured_kafka: SecuredKafka, topic_factory: TopicFactory, group_id: str, processor_factory: ProcessorFactory,
    transport: str,
) -> None:  # fmt: skip
    plain = secured_kafka.bootstrap
    inp, out, dlq = (topic_factory(plain, 1, prefix) for prefix in ("in", "out", "dlq"))
    security = scram(secured_kafka) if transport.startswith("scram") else mtls(secured_kafka)
    proc = processor_factory(processor_env(plain, inp, out, dlq, group_id, **security), name=transport)
    ids = {f"sec-{i}" for i in range(5)}
    produce_values(plain, inp, [image_event(e, jpeg_bytes(64, 64)) for e in sorted(ids)])
    messages = read_until_ids(plain, [out, dlq], 1, ids, timeout_s=60)
    print(
        f"\nFIGURE security[{transport}]: {len(messages)} of {len(ids)} events scored "
        f"over {security['KAFKA_SECURITY_PROTOCOL']}"
    )
    assert {event_id_of(m) for m in messages} == ids and all(m.topic() == out for m in messages)
    assert PASSWORD not in exposed(proc)
    assert proc.stop() == 0


def test_bad_credentials_leave_the_processor_unready_with_kafkas_reason_and_no_log_flood(
    secured_kafka: SecuredKafka, topic_factory: TopicFactory, group_id: str, processor_factory: ProcessorFactory
) -> None:
    plain = secured_kafka.bootstrap
    inp, out, dlq = (topic_factory(plain, 1, prefix) for prefix in ("in", "out", "dlq"))
    cases = {  # name -> (settings, what librdkafka's reason must say)
        "wrong-password": (scram(secured_kafka, password=WRONG_PASSWORD), ("_AUTHENTICATION",)),
        # The reason, whichever code librdkafka files it under: _SSL mostly, _TRANSPORT when the verify failure
        # surfaces on the transport first (seen once in a clean-clone CI run, 2026-12-01).
        "untrusted-ca": (scram(secured_kafka, ca=secured_kafka.rogue_ca), ("certificate verify failed",)),
        "wrong-client-cert": (
            mtls(secured_kafka, secured_kafka.rogue_client_cert, secured_kafka.rogue_client_key),
            ("certificate",),  # _TRANSPORT "alert bad certificate" (or _SSL, by OpenSSL version)
        ),
    }
    procs = {}
    for name, (settings, _) in cases.items():
        env = processor_env(plain, inp, out, dlq, f"{group_id}-{name}", **settings)
        procs[name] = processor_factory(env, ready=False, name=name)

    def reason(proc: ProcessorProc) -> str | None:
        try:
            return proc.get_json("/health")[1]["kafka"]["last_error"]
        except OSError:
            return None

    first_seen: dict[str, float] = {}
    for name, proc in procs.items():
        last_error = wait_for(lambda p=proc: reason(p), 90, f"{name}: a Kafka error in /health")  # type: ignore[misc]
        first_seen[name] = time.monotonic()
        for part in cases[name][1]:
            assert part in last_error, f"{name}: {last_error!r}"
    # Let librdkafka retry for a while, then count what reached the log: its reconnects must not flood it.
    window_s = 8.0
    wait_for(lambda: time.monotonic() - max(first_seen.values()) >= window_s, 30, "the observation window")
    for name, proc in procs.items():
        assert proc.alive, f"{name} exited:\n{proc.log_tail()}"
        assert proc.get("/readyz")[0] == 503
        health = proc.get_json("/health")[1]
        last_error = health["kafka"]["last_error"]
        log = proc.log_path.read_text()
        kafka_lines = [line for line in log.splitlines() if '"logger": "librdkafka' in line or "kafka error" in line]
        seconds = time.monotonic() - first_seen[name]
        print(f"\nFIGURE security[{name}]: /readyz 503, status={health['status']}, last_error={last_error!r}, "
              f"{len(kafka_lines)} Kafka log lines in {seconds:.0f}s")  # fmt: skip
        assert last_error.split(":", 1)[0] in log, f"{name}: the reason is not in the log"
        assert len(kafka_lines) <= 30, f"{name}: {len(kafka_lines)} Kafka log lines: a flood"
        assert PASSWORD not in exposed(proc) and WRONG_PASSWORD not in exposed(proc)
