"""`make bench`: cio-relay against the official Customer.io SDKs, on a local fake Customer.io."""
