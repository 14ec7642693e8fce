"""The report writer's phrase bank.

Every wording was checked against the CheXpert labeler's mention phrases
(tests/test_synthetic.py does it again): a positive sentence mentions its own observation
and no other one, and avoids hedging words unless it is meant as hedged.
Placeholders: {loc} lung location, {side} patient side, {size}/{adv} severity,
{kind} nodule/mass, {dim} its size, {bone}, {pt_loc}, {po_loc}, {wall}, {cm}, {entry},
{tip}, {leads}, {nlead}.
"""
from __future__ import annotations

from input_pipeline.synthetic.findings import CARDIOMEGALY, WIDE_MEDIASTINUM

FINDING_PHRASES: dict[str, tuple[str, ...]] = {
    "Lung Opacity": (
        "There is a patchy opacity in the {loc}.",
        "Hazy opacity in the {loc}.",
        "Ill-defined opacity projects over the {loc}.",
        "Increased opacity is seen in the {loc}.",
        "Focal airspace opacity in the {loc}.",
        "An area of airspace disease is present in the {loc}.",
        "Patchy infiltrate in the {loc}.",
        "Ground-glass opacity in the {loc}.",
        "There is increased density in the {loc}.",
    ),
    "Consolidation": (
        "There is consolidation in the {loc}.",
        "Dense consolidation in the {loc}.",
        "Focal consolidation is present in the {loc}.",
        "{loc} consolidation.",
        "Airspace consolidation in the {loc}.",
        "Consolidation with air bronchograms in the {loc}.",
        "There is a dense area of consolidation in the {loc}.",
        "Lobar consolidation involving the {loc}.",
        "Well-defined consolidation in the {loc}.",
    ),
    "Pneumonia": (
        "{loc} pneumonia.",
        "There is a {loc} pneumonia.",
        "Findings of pneumonia in the {loc}.",
        "Pneumonia in the {loc}.",
        "Focal pneumonia is seen in the {loc}.",
        "Patchy multifocal pneumonia in the {loc}.",
        "Bronchopneumonia in the {loc}.",
        "Infection in the {loc}.",
        "Infectious process in the {loc}.",
    ),
    "Lung Lesion": (
        "There is a {dim} {kind} in the {loc}.",
        "A {dim} {kind} projects over the {loc}.",
        "Well-circumscribed {dim} {kind} in the {loc}.",
        "{kind} in the {loc} measuring {dim}.",
        "A rounded {kind} is present in the {loc}.",
        "Solitary pulmonary {kind} in the {loc}.",
        "There is a {kind} in the {loc}.",
        "A {dim} pulmonary {kind} in the {loc}.",
        "A well-defined {kind} is seen in the {loc}.",
    ),
    "Atelectasis": (
        "Linear atelectasis in the {loc}.",
        "Segmental atelectasis in the {loc}.",
        "Subsegmental atelectasis in the {loc}.",
        "There is discoid atelectasis in the {loc}.",
        "Bandlike atelectasis in the {loc}.",
        "Streaky atelectasis in the {loc}.",
        "Atelectatic changes are seen in the {loc}.",
        "{loc} atelectasis.",
        "Minor atelectasis in the {loc}.",
    ),
    "Edema": (
        "{size} pulmonary edema.",
        "There is {size} pulmonary edema.",
        "{size} interstitial pulmonary edema.",
        "Perihilar pulmonary edema.",
        "Pulmonary vascular congestion with {size} edema.",
        "Findings of {size} pulmonary edema.",
        "{size} bilateral perihilar edema.",
        "There is {size} bilateral pulmonary edema.",
    ),
    "Pneumothorax": (
        "{size} {side} pneumothorax.",
        "There is a {size} {side} pneumothorax.",
        "{size} {side} {pt_loc} pneumothorax.",
        "A {size} {side}-sided pneumothorax is present.",
        "{side} pneumothorax with a visible pleural edge.",
        "There is a {side} {pt_loc} pneumothorax.",
        "{side}-sided pneumothorax, {size} in size.",
        "A {size} pneumothorax is seen on the {side}.",
    ),
    "Pleural Effusion": (
        "{size} {side} pleural effusion.",
        "There is a {size} {side} pleural effusion.",
        "{size} {side}-sided pleural effusion.",
        "A {size} {side} effusion is present.",
        "{side} pleural effusion blunting the costophrenic angle.",
        "{size} {side} pleural fluid collection.",
        "{side} pleural effusion with a meniscus.",
        "There is a {size} layering {side} pleural effusion.",
    ),
    "Pleural Other": (
        "{side} {po_loc} pleural thickening.",
        "There is {side} {po_loc} pleural thickening.",
        "Pleural thickening along the {side} {wall}.",
        "Focal {side} pleural thickening.",
        "Smooth pleural thickening is seen along the {side} {wall}.",
        "Mild {side} pleural thickening.",
        "Chronic {side} {po_loc} pleural thickening.",
        "{side}-sided pleural thickening.",
    ),
    "Fracture": (
        "Acute fracture of the {bone}.",
        "There is a displaced fracture of the {bone}.",
        "{bone} fracture.",
        "Fracture of the {bone} is noted.",
        "A displaced {bone} fracture is seen.",
        "There is an acute {bone} fracture.",
        "Mildly displaced fracture of the {bone}.",
        "Fracture deformity of the {bone}.",
    ),
    "Cardiomegaly": (
        "{size} cardiomegaly.",
        "The heart is {adv} enlarged.",
        "The heart is enlarged.",
        "There is {size} cardiomegaly.",
        "Enlarged cardiac silhouette.",
        "The cardiac silhouette is {adv} enlarged.",
        "{size} enlargement of the cardiac silhouette.",
        "Heart size is enlarged.",
        "Cardiac enlargement is noted.",
    ),
    "Enlarged Cardiomediastinum": (
        "The mediastinum is widened.",
        "Widened mediastinum.",
        "The superior mediastinum is widened.",
        "Widening of the upper mediastinum.",
        "Enlarged cardiomediastinal silhouette.",
        "The mediastinal silhouette is widened.",
        "The mediastinal contour is widened.",
        "Enlarged cardiomediastinum.",
        "Mediastinal contours are widened.",
    ),
}

# Support devices: one sentence per drawn device (finding_sentences joins them).
DEVICE_PHRASES: dict[str, tuple[str, ...]] = {
    "ett": (
        "Endotracheal tube terminates {cm} cm above the carina.",
        "An endotracheal tube is in place with tip {cm} cm above the carina.",
        "The endotracheal tube tip is {cm} cm above the carina.",
        "Endotracheal tube in standard position, {cm} cm above the carina.",
        "Endotracheal tube with tip approximately {cm} cm from the carina.",
        "ET tube ends {cm} cm above the carina.",
        "The patient is intubated with the endotracheal tube {cm} cm above the carina.",
        "Endotracheal tube is appropriately positioned {cm} cm above the carina.",
    ),
    "cvc": (
        "{side} {entry} central venous catheter terminates {tip}.",
        "{side} {entry} catheter with tip {tip}.",
        "A {side} {entry} central line ends {tip}.",
        "{side} {entry} central venous catheter is seen with its tip {tip}.",
        "There is a {side} {entry} venous catheter with the tip {tip}.",
        "{side}-sided central venous catheter terminates {tip}.",
        "The {side} {entry} catheter tip lies {tip}.",
        "{side} {entry} line tip is {tip}.",
    ),
    "pacemaker": (
        "{side}-sided pacemaker with leads {leads}.",
        "A {side} chest wall pacemaker is present with leads {leads}.",
        "{nlead} pacemaker with leads {leads}.",
        "{nlead} pacemaker device overlies the {side} chest wall.",
        "{side} pectoral pacemaker with leads {leads}.",
        "Pacemaker leads terminate {leads}.",
        "A {nlead} cardiac pacemaker is seen in the {side} chest wall.",
        "Pacer generator in the {side} chest wall with leads {leads}.",
    ),
    "ngt": (
        "Nasogastric tube courses below the diaphragm with tip in the stomach.",
        "An enteric tube terminates in the stomach.",
        "Nasogastric tube tip is in the stomach.",
        "The nasogastric tube extends into the stomach.",
        "Enteric tube with tip below the diaphragm in the stomach.",
        "Orogastric tube terminates in the stomach.",
        "A feeding tube passes below the diaphragm into the stomach.",
        "Nasogastric tube in place with tip in the stomach.",
    ),
}

# Hedged wording for a drawn pneumonia: label -1 (uncertain).
HEDGED_PHRASES: dict[str, tuple[str, ...]] = {
    "Pneumonia": (
        "Possible pneumonia in the {loc}.",
        "Probable {loc} pneumonia.",
        "Findings may represent early pneumonia in the {loc}.",
        "Cannot exclude pneumonia in the {loc}.",
        "Questionable {loc} pneumonia.",
        "Suspected pneumonia in the {loc}.",
    ),
}

IMPRESSION_PHRASES: dict[str, tuple[str, ...]] = {
    "Lung Opacity": ("{loc} opacity.", "Patchy {loc} opacity.", "Opacity in the {loc}.",
                     "Focal opacity in the {loc}.", "{loc} airspace opacity."),
    "Consolidation": ("{loc} consolidation.", "Consolidation in the {loc}.",
                      "Focal {loc} consolidation.", "Dense consolidation in the {loc}.",
                      "Airspace consolidation in the {loc}."),
    "Pneumonia": ("{loc} pneumonia.", "Pneumonia in the {loc}.",
                  "Findings of {loc} pneumonia.", "Focal pneumonia in the {loc}.",
                  "{loc} bronchopneumonia."),
    "Lung Lesion": ("{loc} {kind}.", "{dim} {loc} {kind}.", "Pulmonary {kind} in the {loc}.",
                    "Solitary {kind} in the {loc}.", "{kind} in the {loc}."),
    "Atelectasis": ("{loc} atelectasis.", "Linear atelectasis in the {loc}.",
                    "Subsegmental atelectasis in the {loc}.", "Atelectasis in the {loc}.",
                    "Discoid {loc} atelectasis."),
    "Edema": ("{size} pulmonary edema.", "Pulmonary edema.", "{size} interstitial edema.",
              "Perihilar pulmonary edema.", "Findings of {size} pulmonary edema."),
    "Pneumothorax": ("{size} {side} pneumothorax.", "{side} pneumothorax.",
                     "{side}-sided pneumothorax.", "{side} {pt_loc} pneumothorax.",
                     "Pneumothorax on the {side}."),
    "Pleural Effusion": ("{size} {side} pleural effusion.", "{side} pleural effusion.",
                         "{side}-sided pleural effusion.", "{size} {side} effusion.",
                         "Pleural effusion on the {side}."),
    "Pleural Other": ("{side} pleural thickening.", "{side} {po_loc} pleural thickening.",
                      "Pleural thickening on the {side}.", "Focal {side} pleural thickening.",
                      "{side}-sided pleural thickening."),
    "Fracture": ("{bone} fracture.", "Acute {bone} fracture.", "Fracture of the {bone}.",
                 "Displaced {bone} fracture.", "{bone} fracture as described."),
    "Cardiomegaly": ("Cardiomegaly.", "{size} cardiomegaly.", "Enlarged heart.",
                     "The heart is enlarged.", "Cardiac enlargement."),
    "Enlarged Cardiomediastinum": ("Widened mediastinum.", "Enlarged cardiomediastinum.",
                                   "The mediastinum is widened.",
                                   "Widening of the superior mediastinum.",
                                   "Widened mediastinal silhouette."),
    "Support Devices": ("Support devices as described.", "Lines and tubes as described.",
                        "Support devices in place.", "Tubes and lines in appropriate position.",
                        "Medical devices in standard position."),
}
HEDGED_IMPRESSIONS: dict[str, tuple[str, ...]] = {
    "Pneumonia": ("Possible {loc} pneumonia.", "Cannot exclude pneumonia in the {loc}.",
                  "Probable {loc} pneumonia.", "Questionable pneumonia in the {loc}.",
                  "Suspected {loc} pneumonia."),
}

# Explicit negations of absent observations (label 0).
NEGATION_PHRASES: dict[str, tuple[str, ...]] = {
    "Enlarged Cardiomediastinum": (
        "The mediastinum is normal in width.", "No widening of the mediastinum.",
        "No evidence of a widened mediastinum.", "The mediastinal silhouette is not enlarged.",
        "The cardiomediastinal silhouette is not enlarged."),
    "Cardiomegaly": (
        "No cardiomegaly.", "There is no cardiomegaly.", "The heart is not enlarged.",
        "No evidence of cardiomegaly.", "The cardiac silhouette is not enlarged."),
    "Lung Lesion": (
        "No pulmonary nodules or masses.", "There is no lung mass.",
        "No focal nodule or mass is identified.", "No evidence of a pulmonary mass.",
        "No discrete pulmonary nodule."),
    "Lung Opacity": (
        "No focal opacity.", "There is no focal airspace opacity.", "No airspace disease.",
        "No focal airspace disease.", "No abnormal opacity is seen.", "No infiltrate."),
    "Edema": (
        "No pulmonary edema.", "There is no pulmonary edema.",
        "No evidence of pulmonary edema.", "No pulmonary vascular congestion.",
        "There is no evidence of edema."),
    "Consolidation": (
        "No focal consolidation.", "There is no consolidation.",
        "No evidence of consolidation.", "No consolidation is seen.", "No lobar consolidation."),
    "Pneumonia": (
        "No evidence of pneumonia.", "There is no pneumonia.",
        "No radiographic evidence of pneumonia.", "No pneumonia.",
        "No findings of pneumonia."),
    "Atelectasis": (
        "No atelectasis.", "There is no atelectasis.", "No evidence of atelectasis.",
        "No focal atelectasis.", "No lobar collapse."),
    "Pneumothorax": (
        "No pneumothorax.", "There is no pneumothorax.", "No evidence of pneumothorax.",
        "No pneumothorax is identified.", "No pneumothorax is seen."),
    "Pleural Effusion": (
        "No pleural effusion.", "There is no pleural effusion.",
        "No evidence of pleural effusion.", "No pleural effusions are seen.",
        "No effusion is present."),
    "Pleural Other": (
        "No pleural thickening.", "There is no pleural thickening.",
        "No evidence of pleural thickening.", "No focal pleural thickening.",
        "No pleural thickening is seen."),
    "Fracture": (
        "No acute fracture.", "No displaced fracture.", "There is no rib fracture.",
        "No evidence of fracture.", "No displaced rib fractures are seen."),
}

# Normal statements: (sentence, observations it negates). Topics are used only when none
# of their observations is present.
_EC, _CM = WIDE_MEDIASTINUM, CARDIOMEGALY  # short names keep the table narrow
NORMAL_STATEMENTS: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "lungs": (
        ("The lungs are clear.", ()),
        ("Lungs are clear bilaterally.", ()),
        ("The lungs are well expanded and clear.", ()),
        ("Clear lungs.", ()),
        ("The lungs are clear without focal consolidation.", ("Consolidation",)),
        ("No focal airspace consolidation.", ("Consolidation",)),
        ("No focal airspace disease.", ("Lung Opacity",)),
    ),
    "pleura": (
        ("No pleural effusion or pneumothorax.", ("Pleural Effusion", "Pneumothorax")),
        ("There is no pleural effusion or pneumothorax.", ("Pleural Effusion", "Pneumothorax")),
        ("No pneumothorax or pleural effusion is seen.", ("Pleural Effusion", "Pneumothorax")),
        ("No effusion or pneumothorax.", ("Pleural Effusion", "Pneumothorax")),
        ("The costophrenic angles are sharp.", ()),
        ("The pleural spaces are clear.", ()),
    ),
    "heart": (
        ("Heart size is normal.", (_CM,)),
        ("The heart is normal in size.", (_CM,)),
        ("Normal heart size.", (_CM,)),
        ("The cardiac silhouette is normal in size.", (_CM,)),
        ("The heart is not enlarged.", (_CM,)),
        ("Cardiac size is within normal limits.", (_CM,)),
    ),
    "mediastinum": (
        ("The mediastinal contours are normal.", (_EC,)),
        ("Normal cardiomediastinal silhouette.", (_EC,)),
        ("The mediastinum is normal in width.", (_EC,)),
        ("Mediastinal contours are within normal limits.", (_EC,)),
        ("Hilar and mediastinal contours are unremarkable.", (_EC,)),
    ),
    "cardiomediastinal": (
        ("The heart and mediastinum are normal.", (_CM, _EC)),
        ("Heart size and mediastinal contours are normal.", (_CM, _EC)),
        ("Normal heart size and mediastinal contour.", (_CM, _EC)),
        ("The heart size and mediastinal silhouette are within normal limits.", (_CM, _EC)),
        ("Heart size is normal and there is no widening of the mediastinum.", (_CM, _EC)),
    ),
    "bones": (
        ("No acute osseous abnormality.", ()),
        ("The osseous structures are intact.", ()),
        ("Visualized osseous structures are unremarkable.", ()),
        ("The bony thorax is intact.", ()),
        ("No acute fracture.", ("Fracture",)),
        ("No displaced rib fracture.", ("Fracture",)),
    ),
    "impression": (
        ("No acute cardiopulmonary process.", ()),
        ("No acute cardiopulmonary abnormality.", ()),
        ("No acute intrathoracic process.", ()),
        ("No acute cardiopulmonary disease.", ()),
        ("No radiographic evidence of acute cardiopulmonary disease.", ()),
    ),
}

# Location wordings per (side, zone): lobar and zonal names that match the drawing.
LOCATIONS: dict[tuple[str, str], tuple[str, ...]] = {
    ("right", "upper"): ("right upper lobe", "right upper lung zone", "right upper lung"),
    ("right", "mid"): ("right middle lobe", "right mid lung zone", "right mid lung"),
    ("right", "lower"): ("right lower lobe", "right lung base", "right lower lung zone",
                         "right base"),
    ("left", "upper"): ("left upper lobe", "left upper lung zone", "left upper lung"),
    ("left", "mid"): ("lingula", "left mid lung zone", "left mid lung"),
    ("left", "lower"): ("left lower lobe", "left lung base", "left lower lung zone",
                        "left base"),
}
