//! S3 store tests against a real moto server.
