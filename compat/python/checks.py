"""The line protocol every compat program speaks: `<check> ok|FAIL: why`."""
import sys
import traceback


class Checks:
    def __init__(self):
        self.failed = 0

    def version(self, text):
        print(f"version {text}", flush=True)

    def report(self, name, error=None):
        if error is None:
            print(f"{name} ok", flush=True)
        else:
            self.failed += 1
            msg = " ".join(str(error).split())[:300] or type(error).__name__
            print(f"{name} FAIL: {msg}", flush=True)
            traceback.print_exception(error, file=sys.stderr)

    def run(self, name, fn):
        try:
            fn()
        except Exception as e:  # any failure of the check is reported, not raised
            self.report(name, e)
        else:
            self.report(name)

    async def arun(self, name, coro_fn):
        try:
            await coro_fn()
        except Exception as e:
            self.report(name, e)
        else:
            self.report(name)

    def exit(self):
        sys.exit(1 if self.failed else 0)


def expect(cond, what):
    if not cond:
        raise AssertionError(what)
