"""Guarded network access: the SSRF policy, URL checks, the pinned client and the ranged reader.

Each layer builds on the one before, and each has a small interface:

* :mod:`app.net.policy`: which addresses may be contacted (``forbidden_reason``) and the
  :class:`~app.net.policy.FetchPolicy` (allowed networks and ports, timeouts, byte cap, redirects);
* :mod:`app.net.urls`: ``check_url_full`` reads a URL as a browser would and refuses it when it names
  a forbidden address, returning the addresses a connection may use;
* :mod:`app.net.client`: ``GuardedClient`` sends requests to exactly those addresses, checking every
  redirect hop; ``fetch_bytes`` is the one-shot form;
* :mod:`app.net.blocks`: ``BlockReader``, the block cache and readahead both ranged readers share;
* :mod:`app.net.ranged`: ``HttpRangeReader``, a seekable file object over a URL (Range requests);
* :mod:`app.net.objectstore`: ``ObjectRangeReader`` over an S3 object (ranged GETs pinned to its ETag
  and version), the buckets a caller may name (``ObjectStorePolicy``) and the store handles.

Nothing here knows the service's settings: :mod:`app.config` builds the policy.
"""
