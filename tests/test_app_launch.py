"""How ``aftzoo app`` starts: loopback by default, a warning when exposed without a login, the opt-in login."""
import httpx

from tests.helpers import run_cli, start_app, stop

PASSWORD = "s3cret-Pa55-word"


def test_exposed_without_a_login_warns(tmp_path):
    proc, url, log = start_app(tmp_path, "--host", "0.0.0.0")
    try:
        assert httpx.get(url, timeout=30).status_code == 200
        assert "warning: the app listens on 0.0.0.0" in log.read_text() and "AFTZOO_APP_PASSWORD" in log.read_text()
    finally:
        stop(proc)


def test_the_login_guards_the_page_and_the_api_and_the_password_never_shows(tmp_path):
    proc, url, log = start_app(tmp_path, "--host", "0.0.0.0",
                               env={"AFTZOO_APP_USER": "alice", "AFTZOO_APP_PASSWORD": PASSWORD})
    try:
        assert "warning" not in log.read_text()  # exposed, but behind the login
        with httpx.Client(base_url=url, timeout=30) as anonymous:
            assert anonymous.get("config").status_code == 401
            assert anonymous.post("login", data={"username": "alice", "password": "wrong"}).status_code >= 400
            assert anonymous.get("config").status_code == 401
        with httpx.Client(base_url=url, timeout=30) as alice:
            assert alice.post("login", data={"username": "alice", "password": PASSWORD}).status_code == 200
            assert alice.get("config").status_code == 200
    finally:
        stop(proc)
    assert PASSWORD not in log.read_text()


def test_a_half_set_login_is_refused_with_one_line(tmp_path):
    r = run_cli("app", "--port", "0", env={"AFTZOO_HOME": str(tmp_path), "AFTZOO_APP_USER": "alice"}, timeout=120)
    assert r.returncode == 1
    assert "set both AFTZOO_APP_USER and AFTZOO_APP_PASSWORD" in r.stderr and "Traceback" not in r.stderr


def test_a_page_mounted_before_the_five_comes_first():
    """The slot ``app.build_page`` uses: a page builder passed to ``build`` becomes the first tab."""
    import gradio as gr

    from app.web import build
    from transfer.jobs.queue import JobQueue

    def build_page(ui):
        with gr.Tab("Build a small model", id="build"):
            gr.Markdown("uses " + ui.dataset.elem_id)

    queue = JobQueue(workers=1)
    try:
        config = build(queue, pages_before=[build_page]).get_config_file()
    finally:
        queue.shutdown()
    tabs = [c["props"]["label"] for c in config["components"] if c.get("type") == "tabitem"]
    assert tabs[:3] == ["Build a small model", "1. Data", "2. Teachers"], tabs
