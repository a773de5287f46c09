"""memprof's IPython extension: ``%load_ext memprof`` loads memprof's agent into this
interpreter and registers %memit / %%memit, %mprun and %memprof_top."""
import sys

from . import _agent


def load_ipython_extension(ipython):
    from .magics import MemprofMagics
    ipython.register_magics(MemprofMagics)
    if _agent.state["started"]:
        return
    try:
        _agent.start()
        _agent.state["error"] = None
        print("memprof: tracking this process (pid %d, %s mode): %%memit, %%mprun -f FUNC, %%memprof_top"
              % (__import__("os").getpid(), _agent.state["mode"]))
    except _agent.MemprofError as e:
        _agent.state["error"] = str(e)
        print("memprof: cannot start: %s; the session carries on without memprof" % e, file=sys.stderr)
    except Exception as e:  # never take the session down
        _agent.state["error"] = "%s: %s" % (type(e).__name__, e)
        print("memprof: cannot start: %s; the session carries on without memprof" % _agent.state["error"],
              file=sys.stderr)


def unload_ipython_extension(ipython):
    """The agent stays (it cannot leave a running interpreter on its own); %reload_ext finds it."""
