"""Column names, value domains and real marginals of the UCI Diabetes 130-US hospitals table.

The generator in `synthetic.ehr` draws from these tables so that a synthetic hospital extract
looks, column by column, like the public `diabetic_data.csv` (Strack et al., 2014; 101,766
encounters of 71,518 patients, 1999-2008). The counts are the published value counts of that
file, rounded where the tail is long. Keeping them here, apart from the sampling code, lets a
reviewer check the realism claim against the public data without reading the generator.
"""

from __future__ import annotations

MEDICATION_COLUMNS: tuple[str, ...] = (
    "metformin",
    "repaglinide",
    "nateglinide",
    "chlorpropamide",
    "glimepiride",
    "acetohexamide",
    "glipizide",
    "glyburide",
    "tolbutamide",
    "pioglitazone",
    "rosiglitazone",
    "acarbose",
    "miglitol",
    "troglitazone",
    "tolazamide",
    "examide",
    "citoglipton",
    "insulin",
    "glyburide-metformin",
    "glipizide-metformin",
    "glimepiride-pioglitazone",
    "metformin-rosiglitazone",
    "metformin-pioglitazone",
)

EHR_COLUMNS: tuple[str, ...] = (
    "encounter_id",
    "patient_nbr",
    "race",
    "gender",
    "age",
    "weight",
    "admission_type_id",
    "discharge_disposition_id",
    "admission_source_id",
    "time_in_hospital",
    "payer_code",
    "medical_specialty",
    "num_lab_procedures",
    "num_procedures",
    "num_medications",
    "number_outpatient",
    "number_emergency",
    "number_inpatient",
    "diag_1",
    "diag_2",
    "diag_3",
    "number_diagnoses",
    "max_glu_serum",
    "A1Cresult",
    *MEDICATION_COLUMNS,
    "change",
    "diabetesMed",
    "readmitted",
)

INTEGER_COLUMNS: tuple[str, ...] = (
    "encounter_id",
    "patient_nbr",
    "admission_type_id",
    "discharge_disposition_id",
    "admission_source_id",
    "time_in_hospital",
    "num_lab_procedures",
    "num_procedures",
    "num_medications",
    "number_outpatient",
    "number_emergency",
    "number_inpatient",
    "number_diagnoses",
)

IDENTIFIER_COLUMNS: tuple[str, ...] = (
    "patient_name",
    "date_of_birth",
    "address",
    "phone",
    "ssn",
    "mrn",
    "admission_date",
    "discharge_date",
    "attending_physician",
)

LABEL_COLUMN = "readmitted"

# 11, 19, 20, 21 expired; 13, 14 hospice. No readmission can follow these encounters.
EXPIRED_OR_HOSPICE: frozenset[int] = frozenset({11, 13, 14, 19, 20, 21})
EXPIRED: frozenset[int] = frozenset({11, 19, 20, 21})

AGE_BANDS: tuple[str, ...] = tuple(f"[{10 * b}-{10 * b + 10})" for b in range(10))
AGE_COUNTS: tuple[int, ...] = (161, 691, 1657, 3775, 9685, 17256, 22483, 26068, 17197, 2793)

RACE_RECORDED: dict[str, int] = {
    "Caucasian": 76099,
    "AfricanAmerican": 19210,
    "Hispanic": 2037,
    "Other": 1506,
    "Asian": 641,
}
RACE_MISSING_SHARE = 2273 / 101766
FEMALE_SHARE = 54708 / 101763
GENDER_UNKNOWN_SHARE = 3 / 101766

WEIGHT_RECORDED: dict[str, int] = {
    "[75-100)": 1336,
    "[50-75)": 897,
    "[100-125)": 625,
    "[125-150)": 145,
    "[25-50)": 97,
    "[0-25)": 48,
    "[150-175)": 35,
    "[175-200)": 11,
    ">200": 3,
}
WEIGHT_MISSING_SHARE = 98569 / 101766

ADMISSION_TYPE: dict[int, int] = {
    1: 53990,
    3: 18869,
    2: 18480,
    6: 5291,
    5: 4785,
    8: 320,
    7: 21,
    4: 10,
}
EMERGENCY_ADMISSION = 1
ELECTIVE_ADMISSION = 3

# Admission source given admission type: emergencies arrive through the emergency room (7),
# elective admissions on a physician referral (1); types 5/6 ("not available"/NULL) carry the
# sources 17/9 ("NULL"/"not available"), as in the real extract.
ADMISSION_SOURCE_BY_TYPE: dict[int, dict[int, float]] = {
    1: {7: 0.888, 1: 0.062, 17: 0.015, 4: 0.012, 6: 0.01, 2: 0.007, 5: 0.004, 20: 0.001, 9: 0.001},
    2: {1: 0.46, 7: 0.36, 4: 0.07, 6: 0.04, 2: 0.025, 17: 0.02, 5: 0.015, 3: 0.005, 20: 0.005},
    3: {1: 0.83, 4: 0.065, 7: 0.03, 6: 0.025, 2: 0.02, 17: 0.015, 5: 0.008, 3: 0.005, 8: 0.001},
    4: {7: 0.5, 14: 0.2, 11: 0.1, 13: 0.1, 1: 0.1},
    5: {17: 0.5, 7: 0.25, 1: 0.13, 4: 0.04, 6: 0.03, 20: 0.02, 9: 0.02, 22: 0.005, 10: 0.005},
    6: {17: 0.55, 7: 0.3, 1: 0.1, 9: 0.015, 4: 0.015, 6: 0.01, 25: 0.005, 10: 0.005},
    7: {7: 0.9, 1: 0.1},
    8: {7: 0.4, 17: 0.3, 1: 0.3},
}

DISCHARGE: dict[int, int] = {
    1: 60234,
    3: 13954,
    6: 12902,
    18: 3691,
    2: 2128,
    22: 1993,
    11: 1642,
    5: 1184,
    25: 989,
    4: 815,
    7: 623,
    23: 412,
    13: 399,
    14: 372,
    28: 139,
    8: 108,
    15: 63,
    24: 48,
    9: 21,
    17: 14,
    16: 11,
    19: 8,
    10: 6,
    27: 5,
    12: 3,
    20: 2,
}
# Dispositions that old and long-staying patients reach more often (nursing, rehab, hospice,
# death): log-odds per age band above 60-70 and per unit of the length-of-stay latent.
DISCHARGE_AGE_SLOPE: dict[int, float] = {
    3: 0.35,
    6: 0.15,
    22: 0.25,
    11: 0.3,
    13: 0.3,
    14: 0.3,
    5: 0.1,
    4: 0.2,
    23: 0.2,
    7: -0.4,
}
DISCHARGE_STAY_SLOPE: dict[int, float] = {
    3: 0.5,
    6: 0.3,
    22: 0.6,
    11: 0.4,
    2: 0.3,
    5: 0.4,
    23: 0.5,
    13: 0.3,
    14: 0.3,
    7: -0.5,
}

TIME_IN_HOSPITAL: dict[int, int] = {
    1: 14208,
    2: 17224,
    3: 17756,
    4: 13924,
    5: 9966,
    6: 7539,
    7: 5859,
    8: 4391,
    9: 3002,
    10: 2342,
    11: 1855,
    12: 1448,
    13: 1210,
    14: 1042,
}

PAYER_RECORDED: dict[str, int] = {
    "MC": 32439,
    "HM": 6274,
    "SP": 5007,
    "BC": 4655,
    "MD": 3532,
    "CP": 2533,
    "UN": 2448,
    "CM": 1937,
    "OG": 1033,
    "PO": 592,
    "DM": 549,
    "CH": 146,
    "WC": 135,
    "OT": 95,
    "MP": 79,
    "SI": 55,
    "FR": 1,
}
PAYER_MISSING_SHARE = 40256 / 101766
MEDICARE = "MC"
# Share of recorded payers that are Medicare, by age band: Medicare covers the over-65s.
MEDICARE_SHARE_BY_BAND: tuple[float, ...] = (
    0.02,
    0.05,
    0.1,
    0.12,
    0.14,
    0.17,
    0.55,
    0.8,
    0.82,
    0.82,
)

SPECIALTY_RECORDED: dict[str, int] = {
    "InternalMedicine": 14635,
    "Emergency/Trauma": 7565,
    "Family/GeneralPractice": 7440,
    "Cardiology": 5352,
    "Surgery-General": 3099,
    "Nephrology": 1613,
    "Orthopedics": 1400,
    "Orthopedics-Reconstructive": 1233,
    "Radiologist": 1140,
    "Pulmonology": 871,
    "Psychiatry": 854,
    "Urology": 685,
    "ObstetricsandGynecology": 671,
    "Surgery-Cardiovascular/Thoracic": 652,
    "Gastroenterology": 564,
    "Surgery-Vascular": 533,
    "Surgery-Neuro": 468,
    "PhysicalMedicineandRehabilitation": 391,
    "Oncology": 348,
    "Pediatrics": 254,
    "Hematology/Oncology": 207,
    "Neurology": 203,
    "Pediatrics-Endocrinology": 159,
    "Otolaryngology": 125,
    "Endocrinology": 120,
    "Surgery-Thoracic": 109,
    "Psychology": 101,
    "Podiatry": 100,
    "Surgery-Cardiovascular": 98,
    "Pediatrics-CriticalCare": 87,
    "Hematology": 82,
    "Gynecology": 58,
    "Hospitalist": 57,
    "Radiology": 53,
    "Surgeon": 45,
    "Surgery-Plastic": 41,
    "Osteopath": 39,
    "InfectiousDiseases": 37,
    "SurgicalSpecialty": 33,
    "Obsterics&Gynecology-GynecologicOnco": 25,
    "Pediatrics-Pulmonology": 25,
    "Anesthesiology-Pediatric": 19,
    "Obstetrics": 19,
    "Rheumatology": 17,
    "Ophthalmology": 17,
    "Pathology": 16,
    "Anesthesiology": 12,
    "OutreachServices": 12,
    "Surgery-Maxillofacial": 11,
    "PhysicianNotFound": 11,
    "Surgery-Colon&Rectal": 11,
    "Pediatrics-Neurology": 10,
    "Endocrinology-Metabolism": 8,
    "Surgery-Pediatric": 8,
    "AllergyandImmunology": 7,
    "Cardiology-Pediatric": 7,
    "Psychiatry-Child/Adolescent": 7,
    "DCPTEAM": 6,
    "Dentistry": 4,
    "Pediatrics-Hematology-Oncology": 4,
    "Pediatrics-EmergencyMedicine": 3,
    "Pediatrics-AllergyandImmunology": 3,
    "Resident": 2,
    "Dermatology": 1,
    "Neurophysiology": 1,
    "Perinatology": 1,
    "Proctology": 1,
    "Psychiatry-Addictive": 1,
    "Pediatrics-InfectiousDiseases": 1,
    "Speech": 1,
    "SportsMedicine": 1,
    "Surgery-PlasticwithinHeadandNeck": 1,
}
SPECIALTY_MISSING_SHARE = 49949 / 101766
PEDIATRIC_MARKERS: tuple[str, ...] = ("Pediatric", "Child", "Perinatology")

NUM_PROCEDURES: dict[int, int] = {0: 46652, 1: 20742, 2: 12717, 3: 9443, 4: 4180, 5: 3078, 6: 4954}
NUMBER_DIAGNOSES: dict[int, int] = {
    1: 219,
    2: 1023,
    3: 2835,
    4: 5537,
    5: 11393,
    6: 10161,
    7: 10393,
    8: 10616,
    9: 49474,
    10: 17,
    11: 11,
    12: 9,
    13: 16,
    14: 7,
    15: 10,
    16: 45,
}
LAB_RANGE = (1, 132)
MEDICATIONS_RANGE = (1, 81)
# Prior-year visit counts: (mean, cap). All three are zero-inflated in the real file.
OUTPATIENT = (0.369, 42)
EMERGENCY = (0.198, 76)
INPATIENT = (0.635, 21)

MAX_GLU_SERUM: dict[str, int] = {"None": 96420, "Norm": 2597, ">200": 1485, ">300": 1264}
A1C_RESULT: dict[str, int] = {"None": 84748, ">8": 8216, "Norm": 4990, ">7": 3812}

# Per medication: counts of (Steady, Up, Down) in the real file; "No" is the rest of 101,766.
MEDICATION_COUNTS: dict[str, tuple[int, int, int]] = {
    "metformin": (18346, 1067, 575),
    "repaglinide": (1384, 110, 45),
    "nateglinide": (668, 24, 11),
    "chlorpropamide": (79, 6, 1),
    "glimepiride": (4670, 327, 194),
    "acetohexamide": (1, 0, 0),
    "glipizide": (11356, 770, 560),
    "glyburide": (9274, 812, 564),
    "tolbutamide": (23, 0, 0),
    "pioglitazone": (6976, 234, 118),
    "rosiglitazone": (6100, 178, 87),
    "acarbose": (295, 10, 3),
    "miglitol": (31, 2, 5),
    "troglitazone": (3, 0, 0),
    "tolazamide": (38, 1, 0),
    "examide": (0, 0, 0),
    "citoglipton": (0, 0, 0),
    "insulin": (30849, 11316, 12218),
    "glyburide-metformin": (692, 8, 6),
    "glipizide-metformin": (13, 0, 0),
    "glimepiride-pioglitazone": (1, 0, 0),
    "metformin-rosiglitazone": (2, 0, 0),
    "metformin-pioglitazone": (1, 0, 0),
}
ENCOUNTERS_TOTAL = 101766
# Share of patients on diabetes medication whose regimen changed although no dose moved up or
# down (a switch of drug), which the real `change` column also counts.
SWITCH_SHARE = 0.38

# Encounters per patient: 1..10 from the real file, then a geometric tail up to 40.
ENCOUNTERS_PER_PATIENT: dict[int, int] = {
    1: 54745,
    2: 10434,
    3: 3328,
    4: 1421,
    5: 717,
    6: 346,
    7: 207,
    8: 105,
    9: 83,
    10: 57,
}
MAX_ENCOUNTERS_PER_PATIENT = 40

# ICD-9 codes as the real file writes them: leading zeros dropped ("38" for 038 septicemia),
# 250.xx kept with their decimals, V and E codes as text. Approximate counts per position.
# fmt: off
DIAG_HEAD: tuple[dict[str, int], ...] = (
    {
        "428": 6862, "414": 6581, "786": 4016, "410": 3614, "486": 3508, "427": 2766,
        "491": 2275, "715": 2151, "682": 2042, "434": 2028, "780": 2019, "996": 1967,
        "276": 1966, "38": 1688, "250.8": 1680, "599": 1595, "584": 1520, "V57": 1207,
        "250.6": 1183, "518": 1115, "820": 1082, "577": 1057, "435": 1016, "562": 989,
        "574": 965, "296": 896, "250.7": 871, "440": 846, "493": 800, "789": 735,
        "403": 786, "722": 700, "250.13": 609, "250.02": 590, "433": 510, "250.11": 480,
        "250.12": 450, "8": 420, "558": 410, "785": 400, "250.82": 390, "250.4": 380,
        "250.1": 370, "250.03": 330, "250.01": 310, "250.81": 300, "250.83": 270,
        "250.41": 250, "250.22": 240, "250.92": 210, "250.3": 200, "250.2": 190,
    },
    {
        "276": 6752, "428": 6662, "250": 6071, "427": 5036, "401": 3736, "496": 3305,
        "599": 3288, "403": 2823, "414": 2650, "411": 2566, "250.02": 2074, "707": 1999,
        "585": 1871, "584": 1649, "491": 1545, "250.01": 1523, "780": 1491, "425": 1434,
        "682": 1433, "486": 1379, "518": 1348, "424": 1158, "413": 1042, "250.6": 1041,
        "493": 1000, "285": 900, "305": 800, "272": 700, "197": 700, "787": 600,
        "786": 600, "V45": 600, "250.4": 600, "998": 500, "438": 500, "402": 500,
        "112": 450, "40": 420, "263": 400, "250.03": 350, "250.8": 300, "E878": 280,
        "V58": 250, "E888": 200,
    },
    {
        "250": 11555, "401": 8289, "276": 5175, "428": 4577, "427": 3955, "414": 3664,
        "496": 2605, "403": 2357, "585": 1992, "272": 1969, "599": 1941, "V45": 1389,
        "250.02": 1369, "707": 1360, "780": 1316, "285": 1200, "425": 1100, "250.6": 1100,
        "424": 1000, "305": 1000, "250.01": 1000, "584": 950, "518": 900, "682": 850,
        "413": 800, "486": 700, "493": 700, "593": 600, "530": 600, "311": 600, "412": 600,
        "244": 600, "491": 600, "402": 600, "357": 500, "278": 500, "787": 500, "V58": 500,
        "300": 500, "250.4": 500, "440": 450, "438": 400, "294": 400, "E878": 300,
        "E849": 250, "E885": 200, "E932": 150,
    },
)
# fmt: on
# Missing diag_1/2/3 ('?') beyond what a low number_diagnoses already explains.
DIAG_EXTRA_MISSING: tuple[float, ...] = (0.0002, 0.0015, 0.003)
DIAG_TAIL_SEED = 130_1999_2008  # fixes which rare codes are common: a population fact.

# (first, last, relative weight) of ICD-9 chapters in the rare-code tail.
ICD9_CHAPTERS: tuple[tuple[int, int, float], ...] = (
    (1, 139, 0.6),  # infectious
    (140, 239, 1.2),  # neoplasms
    (240, 279, 1.0),  # endocrine
    (280, 289, 0.8),  # blood
    (290, 319, 0.8),  # mental
    (320, 389, 0.6),  # nervous system and senses
    (390, 459, 1.5),  # circulatory
    (460, 519, 1.0),  # respiratory
    (520, 579, 1.2),  # digestive
    (580, 629, 1.0),  # genitourinary
    (630, 679, 0.2),  # pregnancy
    (680, 709, 0.8),  # skin
    (710, 739, 1.0),  # musculoskeletal
    (740, 759, 0.3),  # congenital
    (780, 799, 1.0),  # symptoms
    (800, 999, 0.8),  # injury and poisoning
)
V_CODES: tuple[int, ...] = (
    2,
    8,
    10,
    11,
    12,
    15,
    17,
    18,
    23,
    25,
    42,
    43,
    44,
    45,
    46,
    49,
    53,
    54,
    55,
    57,
    58,
    60,
    61,
    62,
    63,
    64,
    65,
    66,
    70,
    72,
    85,
    86,
)
E_CODE_RANGE = (800, 999)

# States a synthetic hospital can stand in, with area codes of the state, so that a patient's
# phone number and address agree.
AREA_CODES: dict[str, tuple[int, ...]] = {
    "CA": (213, 415, 619),
    "FL": (305, 407, 813),
    "GA": (404, 678, 770),
    "IL": (312, 773, 847),
    "MI": (248, 313, 616),
    "NC": (336, 704, 919),
    "NJ": (201, 908, 973),
    "NV": (702, 725, 775),
    "OH": (216, 513, 614),
    "PA": (215, 412, 717),
    "TX": (214, 512, 713),
    "WA": (206, 425, 509),
}
