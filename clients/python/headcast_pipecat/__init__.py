"""A headcast avatar for pipecat pipelines: ``HeadcastVideoService`` (needs ``pipecat-ai``)."""

from headcast_pipecat.service import HeadcastVideoService

__all__ = ["HeadcastVideoService"]
