"""Glue for web frameworks: one store, pipeline and conversation manager per application.

* :mod:`promptstate.integrations.fastapi`: a lifespan and dependencies
  (``pip install 'promptstate[fastapi]'``).
* :mod:`promptstate.integrations.aiohttp`: a ``cleanup_ctx`` and typed ``web.AppKey`` s
  (``pip install 'promptstate[aiohttp]'``).

Both open the store once when the application starts, hand the same objects to every
request, and close them when it stops: never a connection pool per request.
"""

from promptstate.integrations._resources import AppResources

__all__ = ["AppResources"]
