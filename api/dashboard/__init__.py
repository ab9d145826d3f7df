"""The internal web dashboard (``/dashboard``): pages served by the API, scripts that read the ``/v1`` API."""
