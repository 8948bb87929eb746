# Shared by the prolog/, epilog/ and health/ entrypoints (sourced, never run on its own;
# the caller sets $here to its own directory and $entry to this file's). Slurm gives these
# no PATH, so every path here is absolute.
#
# Python: $NODECHECK_PYTHON, else the venv the entrypoint sits in (installed from the wheel
# or the Debian package: $here is the venv's bin/), else the checkout's .venv (make
# install), else /usr/bin/python3. NODECHECK_PYTHON counts only as an absolute path to an
# executable file: a relative or broken value must not turn into "Prolog error" drains (or
# run something from the cwd).
#
# The run goes to the nodecheck agent when its socket exists ($NODECHECK_AGENT_SOCKET if
# absolute, else /run/nodecheck/agent.sock; docs/agent.md), through the compiled client
# (agent-client, built from agent_client.c) where it was built, else the Python one; either
# falls back to the in-process run by itself. Without a socket the hook runs in-process
# directly.
nodecheck_hook() {
    phase=$1
    python=$here/python3
    [ -f "$python" ] && [ -x "$python" ] || python=$here/../.venv/bin/python3
    case ${NODECHECK_PYTHON:-} in
    /*) [ -f "$NODECHECK_PYTHON" ] && [ -x "$NODECHECK_PYTHON" ] && python=$NODECHECK_PYTHON ;;
    esac
    [ -f "$python" ] && [ -x "$python" ] || python=/usr/bin/python3
    sock=/run/nodecheck/agent.sock
    case ${NODECHECK_AGENT_SOCKET:-} in
    /*) sock=$NODECHECK_AGENT_SOCKET ;;
    esac
    if [ -S "$sock" ]; then
        if [ -f "$entry/agent-client" ] && [ -x "$entry/agent-client" ]; then
            exec "$entry/agent-client" --socket "$sock" --python "$python" "$phase"
        fi
        exec "$python" -I -S "$entry/agent_client.py" --socket "$sock" "$phase"
    fi
    exec "$python" -I -m nodecheck hook "$phase"
}
