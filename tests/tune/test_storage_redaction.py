from __future__ import annotations

import pytest

from resbench.errors import InputError
from resbench.tune.study import open_storage, redact_url


def test_passwords_never_leave_the_storage_url() -> None:
    assert redact_url("postgresql+psycopg2://tuner:s3cret@db:5432/studies") == \
        "postgresql+psycopg2://tuner:***@db:5432/studies"
    assert redact_url("sqlite:///sweeps/x.db") == "sqlite:///sweeps/x.db"
    assert redact_url("sweeps/study.log") == "sweeps/study.log"


def test_unopenable_storage_error_hides_the_password() -> None:
    with pytest.raises(InputError) as err:
        open_storage("postgresql+psycopg2://tuner:s3cret@127.0.0.1:1/none")
    assert "s3cret" not in str(err.value) and "***" in str(err.value)
