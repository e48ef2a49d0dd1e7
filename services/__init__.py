"""The system under test: five microservices, each its own process with its own database."""
