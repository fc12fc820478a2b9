"""timm model creation with a clear error for unknown names: lives in common.models (the weight-file loader in
common/ needs it too); re-exported here for the distill package and its users."""
from common.models import create_model

__all__ = ["create_model"]
