"""A server that dies is reported as such: `coherentize.testing.ServerProcess` names the exit status or signal and
shows its log's tail, and the conftest's server fixtures turn a server that dies at any point into a failure of the
test that saw it, with that message instead of the "Connection refused" of its clients.

The fixture tests run an inner pytest session in a subprocess on a copy of tests/conftest.py, whose servers are real
processes that really die (an exit code, a SIGSEGV sent to them), and read each inner test's report."""

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from coherentize.testing import ServerDied, ServerProcess, describe_exit

CONFTEST = Path(__file__).with_name("conftest.py")

TOY = textwrap.dedent('''
    import http.server, os, sys
    for i in range(60):
        print(f"toy line {i}", flush=True)
    if sys.argv[2] == "exit-at-start":
        print("toy: giving up before serving", flush=True)
        sys.exit(4)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/exit3":
                print("toy: exiting with 3", flush=True)
                os._exit(3)
            body = str(os.getpid()).encode()  # its pid, so that a test can kill it
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
''')
"""A small HTTP server: 60 log lines, then it serves its pid on any path; /exit3 makes it exit with 3 mid-request,
and mode "exit-at-start" exits with 4 before serving."""


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_describe_exit_names_signals_and_codes():
    assert describe_exit(-signal.SIGSEGV) == "SIGSEGV (exit -11)"
    assert describe_exit(139) == "exit 139 (128 + SIGSEGV, as a shell reports it)"
    assert describe_exit(3) == "exit 3"
    assert describe_exit(0) == "exit 0"


def test_server_process_reports_a_signal_and_its_logs_tail(tmp_path):
    port = _port()
    server = ServerProcess([sys.executable, "-X", "faulthandler", "-c", TOY, str(port), "serve"], tmp_path / "log",
                           name="toy")
    try:
        server.wait_ready(f"http://127.0.0.1:{port}/", timeout_s=60)
        assert server.death() is None
        server.check_alive()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
            pid = int(r.read())
        assert pid == server.pid
        os.kill(pid, signal.SIGSEGV)
        death = server.death(wait_s=30)
        assert death.startswith(f"toy (pid {pid}) died: SIGSEGV (exit -11)\n")
        assert "Fatal Python error: Segmentation fault" in death  # faulthandler's report, from the log
        lines = death.splitlines()
        assert "toy line 59" in lines and "toy line 0" not in lines  # the tail, not the whole log
        assert len(server.log_tail().splitlines()) == 40
        with pytest.raises(ServerDied, match=r"SIGSEGV \(exit -11\)"):
            server.check_alive()
    finally:
        server.stop()


def test_server_process_exiting_while_starting_and_stopped_on_purpose(tmp_path):
    port = _port()
    server = ServerProcess([sys.executable, "-c", TOY, str(port), "exit-at-start"], tmp_path / "log", name="toy")
    with pytest.raises(ServerDied, match=r"(?s)^toy \(pid \d+\) died: exit 4\n.*toy: giving up before serving"):
        server.wait_ready(f"http://127.0.0.1:{port}/", timeout_s=60)
    server.stop()

    port = _port()
    server = ServerProcess([sys.executable, "-c", TOY, str(port), "serve"], tmp_path / "log2", name="toy")
    server.wait_ready(f"http://127.0.0.1:{port}/", timeout_s=60)
    server.stop()  # killed by us: not a death to report
    assert server.proc.returncode == -signal.SIGKILL and server.death() is None


def _run_inner(tmp_path, conftest_extra, modules, timeout_s):
    """Run pytest on `modules` ({file name: source}) beside a copy of tests/conftest.py (plus `conftest_extra`) in a
    subprocess; {test name: (outcome, message)} from its JUnit XML, and the whole output."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "conftest.py").write_text(CONFTEST.read_text() + "\n\n" + textwrap.dedent(conftest_extra))
    for name, source in modules.items():
        (tmp_path / name).write_text(textwrap.dedent(source))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COV_"))}
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist", "-q",
                           f"--basetemp={tmp_path / 'base'}", f"--junitxml={tmp_path / 'junit.xml'}", *modules],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout_s)
    out = done.stdout + done.stderr
    assert (tmp_path / "junit.xml").exists(), out
    results = {}
    for case in ET.parse(tmp_path / "junit.xml").getroot().iter("testcase"):
        bad = [e for e in case if e.tag in ("failure", "error", "skipped")]
        results[case.get("name")] = (bad[0].tag, bad[0].text or "") if bad else ("passed", "")
    return results, out


TOY_FIXTURES = '''
    TOY = {toy!r}


    def _toy(request, tmp_path_factory, mode):
        port = _free_port()
        argv = [sys.executable, "-X", "faulthandler", "-c", TOY, str(port), mode]
        with _serve(request.fixturename, argv, f"http://127.0.0.1:{{port}}/", tmp_path_factory, name="toy"):
            yield f"http://127.0.0.1:{{port}}"


    @pytest.fixture(scope="module")
    def toy_server(request, tmp_path_factory):
        yield from _toy(request, tmp_path_factory, "serve")


    @pytest.fixture(scope="module")
    def toy_server_broken(request, tmp_path_factory):
        yield from _toy(request, tmp_path_factory, "exit-at-start")
'''

TOY_TESTS = {
    "test_exits.py": '''
        import urllib.request


        def test_healthy(toy_server):
            assert urllib.request.urlopen(toy_server + "/", timeout=10).status == 200


        def test_exits_mid_request(toy_server):
            urllib.request.urlopen(toy_server + "/exit3", timeout=10)


        def test_after_the_death(toy_server):
            urllib.request.urlopen(toy_server + "/", timeout=10)
    ''',
    "test_killed.py": '''
        import os, signal, socket, time, urllib.request


        def test_killed_but_passes(toy_server):
            pid = int(urllib.request.urlopen(toy_server + "/", timeout=10).read())
            os.kill(pid, signal.SIGSEGV)
            port = int(toy_server.rsplit(":", 1)[1])
            while True:  # until it has closed its socket, then a moment to exit
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                except OSError:
                    break
                time.sleep(0.05)
            time.sleep(0.5)
    ''',
    "test_broken.py": '''
        def test_never_started(toy_server_broken):
            pass
    ''',
}


def test_a_server_that_dies_fails_the_test_with_its_exit_status_and_log(tmp_path):
    results, out = _run_inner(tmp_path, TOY_FIXTURES.format(toy=TOY), TOY_TESTS, timeout_s=300)
    assert set(results) == {"test_healthy", "test_exits_mid_request", "test_after_the_death", "test_killed_but_passes",
                            "test_never_started"}, out
    assert results["test_healthy"][0] == "passed", out

    outcome, message = results["test_exits_mid_request"]
    assert outcome == "failure", out
    assert re.match(r"toy \(pid \d+\) died: exit 3 \(the server of fixture 'toy_server'\)\n", message), message
    assert "toy: exiting with 3" in message and "toy line 59" in message.splitlines()
    assert "toy line 0" not in message.splitlines()  # the last 40 lines only
    assert "The test's own failure, which follows from that:" in message

    outcome, message = results["test_after_the_death"]  # a later test of the same dead server: the same cause
    assert outcome == "failure" and "died: exit 3 (the server" in message and "toy: exiting with 3" in message, out

    outcome, message = results["test_killed_but_passes"]  # the test body passed; its server did not survive it
    assert outcome == "failure" and "died: SIGSEGV (exit -11) (the server of fixture 'toy_server')" in message, out
    assert "Fatal Python error: Segmentation fault" in message and "The test's own failure" not in message

    outcome, message = results["test_never_started"]
    assert outcome == "error" and "died: exit 4\n" in message and "toy: giving up before serving" in message, out


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the server's pid in /proc")
def test_real_llama_cpp_server_killed_by_sigsegv_mid_test_fails_with_its_signal_and_log(tmp_path):
    pytest.importorskip("llama_cpp")
    inner = '''
        import json, os, signal, socket, time, urllib.error, urllib.request
        from pathlib import Path

        import pytest


        def _server_pid():  # the llama_cpp.server this process started (found without the fixture's help)
            for stat in Path("/proc").glob("[0-9]*/stat"):
                try:
                    ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
                    cmd = (stat.parent / "cmdline").read_bytes().split(b"\\0")
                except (OSError, IndexError, ValueError):
                    continue
                if ppid == os.getpid() and b"llama_cpp.server" in cmd:
                    return int(stat.parent.name)
            raise AssertionError("no llama_cpp.server child process")


        def test_chat_after_the_server_crashed(llama_server):
            assert urllib.request.urlopen(llama_server + "/models", timeout=30).status == 200
            os.kill(_server_pid(), signal.SIGSEGV)  # what the native build on Intel Xeon did at the first decode
            port = int(llama_server.rsplit(":", 1)[1].split("/")[0])
            for _ in range(600):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                except OSError:
                    break
                time.sleep(0.05)
            body = json.dumps({"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}],
                               "max_tokens": 4}).encode()
            request = urllib.request.Request(llama_server + "/chat/completions", body,
                                             {"Content-Type": "application/json"})
            urllib.request.urlopen(request, timeout=60)  # Connection refused: all the old fixture reported
    '''
    results, out = _run_inner(tmp_path, "", {"test_crash.py": inner}, timeout_s=300)
    outcome, message = results["test_chat_after_the_server_crashed"]
    assert outcome == "failure", out
    assert re.match(r"llama_cpp.server \(pid \d+\) died: SIGSEGV \(exit -11\) \(the server of fixture 'llama_server'\)",
                    message), message
    assert "Fatal Python error: Segmentation fault" in message, message  # the server's own log, tail
    assert "Connection refused" in message  # the client's error comes after, as the consequence
