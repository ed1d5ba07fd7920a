"""Model workers: each loaded model runs in a process of its own (child.py), which the server
talks to through a RemoteEngine (remote.py) over a socket (protocol.py)."""
