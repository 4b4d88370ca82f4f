"""Multi-frame CT objects built from real single-frame series: Legacy Converted Enhanced CT with
highdicom, Enhanced CT from that with pydicom, and frames reordered."""

from __future__ import annotations

from collections.abc import Sequence
from copy import deepcopy
from pathlib import Path

import highdicom as hd
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import EnhancedCTImageStorage, generate_uid

NOT_IN_SOURCE = ("ReferencedImageSequence", "SourceImageSequence")
"""References to images outside the series (the scout): dropped from the sources, since a converted
object would then need their evidence sequences (dciodvfy counts their absence as an error)."""


def legacy_enhanced_ct(sources: Sequence[Path], target: Path, transfer_syntax: str | None = None) -> Path:
    """One Legacy Converted Enhanced CT object of the single-frame CT slices ``sources`` (highdicom;
    the sources' transfer syntax unless ``transfer_syntax`` is given), written to ``target``."""
    datasets = [pydicom.dcmread(p) for p in sources]
    for ds in datasets:
        for keyword in NOT_IN_SOURCE:
            ds.pop(keyword, None)
    obj = hd.legacy.LegacyConvertedEnhancedCTImage(datasets, series_instance_uid=generate_uid(), series_number=90,
                                                   sop_instance_uid=generate_uid(), instance_number=1,
                                                   transfer_syntax_uid=transfer_syntax)
    del obj.ReferencedSeriesSequence   # the sources, referenced again by each frame's conversion source
    target.parent.mkdir(parents=True, exist_ok=True)
    obj.save_as(target)
    return target


def enhanced_ct(legacy: Path, target: Path) -> Path:
    """The Legacy Converted Enhanced CT object ``legacy`` rewritten as an Enhanced CT Image object:
    the converted attributes moved into the functional groups the Enhanced CT IOD requires."""
    ds = pydicom.dcmread(legacy)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = EnhancedCTImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    shared = ds.SharedFunctionalGroupsSequence[0]
    converted = shared.UnassignedSharedConvertedAttributesSequence[0]
    del shared.UnassignedSharedConvertedAttributesSequence
    first = ds.PerFrameFunctionalGroupsSequence[0].UnassignedPerFrameConvertedAttributesSequence[0]
    value = {**{e.keyword: e.value for e in converted if e.keyword}, **{e.keyword: e.value for e in first if e.keyword}}
    shared.CTAcquisitionTypeSequence = [_item(AcquisitionType="SPIRAL", ConstantVolumeFlag="NO",
                                              FluoroscopyFlag="NO")]
    shared.CTAcquisitionDetailsSequence = [_item(
        DataCollectionDiameter=value["DataCollectionDiameter"], RevolutionTime=0.5,
        SingleCollimationWidth=value["SingleCollimationWidth"], TotalCollimationWidth=value["TotalCollimationWidth"],
        TableHeight=value["TableHeight"], GantryDetectorTilt=value["GantryDetectorTilt"],
        RotationDirection=value["RotationDirection"])]
    shared.CTTableDynamicsSequence = [_item(TableSpeed=value["TableSpeed"],
                                            TableFeedPerRotation=value["TableFeedPerRotation"],
                                            SpiralPitchFactor=value["SpiralPitchFactor"])]
    shared.CTGeometrySequence = [_item(DistanceSourceToDetector=value["DistanceSourceToDetector"],
                                       DistanceSourceToDataCollectionCenter=value["DistanceSourceToPatient"])]
    shared.CTReconstructionSequence = [_item(ReconstructionAlgorithm="FILTER_BACK_PROJ",
                                             ConvolutionKernel=value["ConvolutionKernel"],
                                             ConvolutionKernelGroup="LUNG",
                                             ReconstructionDiameter=value["ReconstructionDiameter"],
                                             ReconstructionPixelSpacing=shared.PixelMeasuresSequence[0].PixelSpacing,
                                             ImageFilter="NONE", ReconstructionAngle=360.0)]
    shared.CTXRayDetailsSequence = [_item(KVP=value["KVP"], FilterType=value["FilterType"],
                                          FocalSpots=[value["FocalSpots"]], FilterMaterial="ALUMINUM",
                                          CalciumScoringMassFactorPatient=None)]
    shared.IrradiationEventIdentificationSequence = [_item(IrradiationEventUID=generate_uid())]
    for item in ds.PerFrameFunctionalGroupsSequence:
        frame = item.UnassignedPerFrameConvertedAttributesSequence[0]
        del item.UnassignedPerFrameConvertedAttributesSequence, item.ConversionSourceAttributesSequence
        content = item.FrameContentSequence[0]
        content.FrameReferenceDateTime = content.FrameAcquisitionDateTime
        content.FrameAcquisitionDuration = 600.0
        item.CTPositionSequence = [_item(TablePosition=float(frame.SliceLocation),
                                         DataCollectionCenterPatient=frame.DataCollectionCenterPatient,
                                         ReconstructionTargetCenterPatient=frame.ReconstructionTargetCenterPatient)]
        item.CTExposureSequence = [_item(ExposureTimeInms=float(value["ExposureTime"]),
                                         XRayTubeCurrentInmA=float(frame.XRayTubeCurrent),
                                         ExposureInmAs=float(frame.Exposure), CTDIvol=frame.CTDIvol,
                                         ExposureModulationType=value["ExposureModulationType"],
                                         CTDIPhantomTypeCodeSequence=[_item(CodeValue="113691",
                                                                            CodingSchemeDesignator="DCM",
                                                                            CodeMeaning="IEC Body Dosimetry Phantom")])]
    ds.AcquisitionNumber = 1
    ds.AcquisitionDuration = 0.6
    ds.PresentationLUTShape = "IDENTITY"
    ds.LossyImageCompression = "00"
    del ds.ContrastBolusAgent
    ds.AcquisitionContextSequence = []
    ds.BurnedInAnnotation = "NO"
    ds.ContentQualification = "PRODUCT"
    ds.save_as(target)
    return target


def _item(**values) -> Dataset:
    item = Dataset()
    for keyword, value in values.items():
        if value is not None:
            setattr(item, keyword, value)
    return item


def reorder_frames(source: Path, target: Path, order: Sequence[int]) -> Path:
    """``source`` with its frames (pixel data and per-frame functional groups) in the 0-based ``order``."""
    ds = pydicom.dcmread(source)
    n = int(ds.NumberOfFrames)
    assert sorted(order) == list(range(n))
    items = list(ds.PerFrameFunctionalGroupsSequence)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence([deepcopy(items[i]) for i in order])
    if ds.file_meta.TransferSyntaxUID.is_encapsulated:
        frames = list(generate_frames(ds.PixelData, number_of_frames=n))
        ds.PixelData = encapsulate([frames[i] for i in order])
    else:
        size = len(ds.PixelData) // n
        ds.PixelData = b"".join(ds.PixelData[i * size:(i + 1) * size] for i in order)
    ds.save_as(target)
    return target
