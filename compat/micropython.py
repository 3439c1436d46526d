"""CPython stand-in for MicroPython's built-in ``micropython`` module.

Lets firmware and simulator modules import unchanged under CPython (host tools, tests with real
sockets). On MicroPython the built-in module is used and this file is never seen.
"""


def const(x):
    return x


def native(f):
    return f


def viper(f):
    return f


def heap_lock():
    return 0


def heap_unlock():
    return 0


def schedule(f, arg):
    f(arg)


def mem_info(*args):
    pass
