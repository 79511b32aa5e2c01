import pytest


@pytest.fixture(autouse=True)
def _no_user_tracking_env(monkeypatch, tmp_path):
    """No test reads the user's MLflow/W&B settings or writes into the shared default store."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("COLLAB_WORKSPACE_ROOT", str(tmp_path / "collab-root"))
