"""What a site and its workers agree on: the environment variables that carry the connection."""

ENV_ADDR = "COLLAB_WORKER_ADDR"    # host:port of the site's listener on 127.0.0.1
ENV_TOKEN = "COLLAB_WORKER_TOKEN"  # one-time token a worker presents in its hello
ENV_SPEC = "COLLAB_WORKER_SPEC"    # JSON: site, mode, script or client, sys.path
