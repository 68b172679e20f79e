"""Varied English test sentences: prose, numbers, dates, abbreviations, questions, long clauses."""

PARITY_SENTENCES = [
    "Hello there.",
    "The quick brown fox jumps over the lazy dog.",
    "Dr. Smith arrived at 5:30 p.m. on March 3rd, 2024.",
    "Is this the right way to the station?",
    "Wow!",
    "The invoice totals $1,234.56, payable within 30 days.",
    "She said, \"Don't worry; we'll be fine.\"",
    "In 1969, Apollo 11 landed on the Moon.",
    "Temperatures dropped to -5 degrees overnight.",
    "Please call 555-0123 before 9 a.m. tomorrow.",
    "Mr. and Mrs. Jones live at 42 Elm St., Springfield.",
    "A.",
    "The ratio was roughly 3.14 to 1, e.g. pi to one.",
    "Twenty-two thousand and fifty samples per second.",
    "Reading, writing, and arithmetic were taught daily.",
    "What time is it in Tokyo right now?",
    "The meeting is scheduled for Monday, 12 January.",
    "Oh no, not again.",
    "Quantization reduces memory, but quality may suffer.",
    "They walked along the river as the sun set behind the old mill and the birds fell silent",
    "Version 2.0 ships on 2025-06-01 with 15% faster decoding.",
    "Hmm, let me think about that for a moment.",
]

LONG_UNPUNCTUATED = (
    "the committee met again in the long hall beside the river to talk about the budget for the "
    "coming year and the people who had travelled from the far villages waited patiently while the "
    "chairman read every line of the report aloud and the clerk wrote down each question that was "
    "asked about the roads the schools the water supply and the old bridge that had been closed since "
    "the spring floods and nobody seemed to know when the work would finally begin because the "
    "engineers had not yet sent their estimate and the money promised by the regional office had not "
    "arrived so the discussion went on and on through the afternoon until the light outside began to "
    "fade and the lamps were lit and still the farmers kept asking the same questions about the bridge "
    "and the council kept giving the same careful answers that promised nothing at all while the children "
    "played outside in the yard and the dogs slept by the door and the evening train went past the mill "
    "without stopping on its way to the city"
)
