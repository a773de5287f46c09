"""A second class with an __init__ for comp_app.py (functions sharing a name in another file)."""


class Cache:
    def __init__(self):
        self.slots = [bytearray(10000) for _ in range(64)]  # OTHER_LINE
