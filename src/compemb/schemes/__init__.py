"""The built-in schemes, registered in :data:`compemb.scheme.SCHEMES` (loaded on its first
lookup): full, hash, path, feature, and one compose scheme per partition family."""

from compemb.scheme import SCHEMES, register_scheme
from compemb.schemes.compose import ComposeScheme
from compemb.schemes.feature import FeatureScheme
from compemb.schemes.full import FullScheme
from compemb.schemes.hashing import HashScheme
from compemb.schemes.path import PathScheme

for _scheme in (FullScheme(), HashScheme(), PathScheme(), FeatureScheme()):
    register_scheme(_scheme)
SCHEMES.for_families(ComposeScheme)

__all__ = ["ComposeScheme", "FeatureScheme", "FullScheme", "HashScheme", "PathScheme"]

# Schemes added later: appended, one block each.
from compemb.schemes.mixed_dim import MixedDimScheme  # noqa: E402

register_scheme(MixedDimScheme())
__all__ += ["MixedDimScheme"]

from compemb.schemes.tt import TTScheme  # noqa: E402

register_scheme(TTScheme())
__all__ += ["TTScheme"]

from compemb.schemes.robe import RobeScheme  # noqa: E402

register_scheme(RobeScheme())
__all__ += ["RobeScheme"]

from compemb.schemes.dhe import DHEScheme  # noqa: E402

register_scheme(DHEScheme())
__all__ += ["DHEScheme"]

from compemb.schemes.block_mixed_dim import BlockMixedDimScheme  # noqa: E402

register_scheme(BlockMixedDimScheme())
__all__ += ["BlockMixedDimScheme"]

from compemb.schemes.mixed_dim_qr import MixedDimQRScheme  # noqa: E402

register_scheme(MixedDimQRScheme())
__all__ += ["MixedDimQRScheme"]

from compemb.schemes.cce import CCEScheme  # noqa: E402

register_scheme(CCEScheme())
__all__ += ["CCEScheme"]
