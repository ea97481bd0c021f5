"""Sampling engines and the backends that build the trainer's model beside them (see ``service/runtime/host.py``)."""
