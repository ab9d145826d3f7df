"""The built-in OpenAI-compatible teacher server (``python -m twofold.teacher_server`` or ``twofold teacher serve``).

``teacher_server.app`` holds the FastAPI app (it imports torch); ``teacher_server.process`` starts the server as a
subprocess and waits until it answers (it does not import torch).
"""
