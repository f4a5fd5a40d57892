"""A company's Kafka: the worker, publish and topic creation over SASL_SSL with SCRAM, against a real broker
whose listener needs a login and TLS (users and certificate made with Kafka's and the JDK's own tools)."""
from __future__ import annotations

import pytest

from callqa.broker import BrokerError, LocalBroker, wait_for_broker
from callqa.publisher import Publisher
from config.kafka_security import KafkaSecurity
from config.settings import Settings
from tests.helpers import WorkerProcess, run_cli
from tests.test_retag import long_call

USER, PASSWORD = "callqa-worker", "a long SCRAM password 42"


def test_settings_say_what_is_missing():
    with pytest.raises(ValueError, match="CALLQA_KAFKA_SASL_MECHANISM"):
        Settings.from_env(kafka_security_protocol="SASL_SSL")
    with pytest.raises(ValueError, match="USERNAME"):
        Settings.from_env(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-256")
    with pytest.raises(ValueError, match="does not use TLS"):
        Settings.from_env(kafka_ssl_cafile="/etc/ca.pem")
    with pytest.raises(ValueError, match="use one of"):
        Settings.from_env(kafka_security_protocol="TLS")
    sec = KafkaSecurity.from_settings(Settings.from_env(
        kafka_security_protocol="sasl_ssl", kafka_sasl_mechanism="scram-sha-512", kafka_sasl_username="u",
        kafka_sasl_password="p"))
    args = sec.kafka_python()
    assert args["security_protocol"] == "SASL_SSL" and args["sasl_mechanism"] == "SCRAM-SHA-512"
    assert args["ssl_context"].check_hostname
    assert KafkaSecurity().kafka_python() == {} and KafkaSecurity().faust_credentials() is None
    creds = sec.faust_credentials()
    assert creds.username == "u" and str(creds.mechanism.value) == "SCRAM-SHA-512"


@pytest.fixture(scope="module")
def secure_broker():
    b = LocalBroker(scram_users={USER: PASSWORD}).start()
    yield b
    b.stop()


def _env(b, mechanism="SCRAM-SHA-256", password=PASSWORD):
    return {"CALLQA_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "CALLQA_KAFKA_SASL_MECHANISM": mechanism,
            "CALLQA_KAFKA_SASL_USERNAME": USER, "CALLQA_KAFKA_SASL_PASSWORD": password,
            "CALLQA_KAFKA_SSL_CAFILE": b.cafile}


@pytest.mark.slow
def test_worker_and_publish_over_sasl_ssl(secure_broker, tmp_path, monkeypatch):
    b = secure_broker
    for k, v in _env(b, "SCRAM-SHA-512").items():
        monkeypatch.setenv(k, v)
    sec = KafkaSecurity.from_env()
    # a wrong password, or no CA for the self-signed certificate: no connection, and the error says where to look
    with pytest.raises(BrokerError, match="CALLQA_KAFKA_SASL"):
        wait_for_broker(b.secure_bootstrap, 8, KafkaSecurity("SASL_SSL", "SCRAM-SHA-256", USER, "wrong",
                                                             cafile=b.cafile).kafka_python())
    with pytest.raises(BrokerError):
        wait_for_broker(b.secure_bootstrap, 8, KafkaSecurity("SASL_SSL", "SCRAM-SHA-256", USER, PASSWORD).kafka_python())

    w = WorkerProcess(b.secure_bootstrap, tmp_path, [tmp_path], extra_env=_env(b)).start()  # SCRAM-SHA-256 here
    try:
        ev = long_call("secure-1")
        with Publisher(b.secure_bootstrap, w.topics["transcribed"], security=sec.kafka_python()) as pub:
            pub.publish_raw(ev.call_id, ev.model_dump_json().encode())
        row = w.wait_for_calls([ev.call_id], statuses=("tagged", "failed"), timeout_s=180)[ev.call_id]
        assert row.status == "tagged", row.error
    finally:
        w.stop()
    log = w.log.read_text()
    assert "Traceback" not in log or "SaslAuthentication" not in log


@pytest.mark.slow
def test_cli_publish_refuses_a_wrong_login(secure_broker, tmp_path, shared_dir):
    env = {**_env(secure_broker, password="not the password"), "CALLQA_KAFKA_BOOTSTRAP": secure_broker.secure_bootstrap,
           "CALLQA_HOME": str(tmp_path)}
    res = run_cli("publish", str(shared_dir / "audio/real/jfk_8k.wav"), "--manager", "m1", env=env, timeout=120)
    assert res.returncode != 0 and "nothing was published" in res.stderr
    assert "Traceback" not in res.stderr
