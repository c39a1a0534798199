"""Word lists shared by the task builders and the zoo's word-level vocabulary.

Every list is plain data. Task builders keep only the words that are single
tokens in the tokenizer at hand, so these lists can be generous.
"""

NAMES = [
    "Mary", "John", "Tom", "James", "Michael", "David", "Sarah", "Paul", "Mark", "Lisa",
    "Anna", "Emma", "Kate", "Jack", "Ben", "Sam", "Alex", "Max", "Luke", "Adam",
    "Eric", "Ryan", "Kevin", "Steve", "Peter", "Jane", "Amy", "Laura", "Rachel", "Daniel",
    "Chris", "Joe", "Bob", "Tim", "Dan", "Matt", "Mike", "Nick", "Andrew", "George",
    "Henry", "Jason", "Scott", "Brian", "Jeff", "Lucy", "Rose", "Grace", "Alice", "Emily",
    "Kelly", "Maria", "Helen", "Linda", "Susan", "Frank", "Carl", "Ian", "Sean", "Jim",
]

PLACES = ["store", "garden", "restaurant", "school", "hospital", "office", "house", "station",
          "park", "library", "market", "beach"]
OBJECTS = ["ring", "kiss", "bone", "basketball", "computer", "necklace", "drink", "snack",
           "book", "ball", "letter", "gift"]

COLORS = ["red", "orange", "yellow", "green", "blue", "purple", "brown", "black", "white", "gray"]
COLOR_OBJECTS = ["pencil", "notebook", "pen", "cup", "plate", "jug", "mug", "puzzle", "textbook",
                 "leash", "necklace", "bracelet", "bottle", "ball", "envelope", "lighter", "bowl",
                 "hat", "shoe", "box"]
SURFACES = ["table", "desk", "floor", "shelf"]
SENTENCE_STARTS = ["there is", "you see", "I see"]

CITIES = ["Paris", "London", "Rome", "Berlin", "Madrid", "Tokyo", "Cairo", "Moscow",
          "Vienna", "Dublin", "Oslo", "Lima", "Delhi", "Seoul", "Athens", "Prague"]

# Synthetic entities whose home city the zoo memorizes (facts="toyworld").
ENTITIES = ["Aldo", "Brix", "Cato", "Dax", "Elio", "Fenn", "Gus", "Hale", "Ivo", "Jory",
            "Kip", "Lev", "Milo", "Nils", "Odo", "Pim", "Quill", "Rex", "Sol", "Tam",
            "Ulf", "Vik", "Wynn", "Xan", "Yuri", "Zed", "Abe", "Bo", "Cy", "Dov", "Eli", "Fitz"]

# Real-world facts for pretrained models (facts="world"): country -> capital.
WORLD_FACTS = {
    "France": "Paris", "England": "London", "Italy": "Rome", "Germany": "Berlin",
    "Spain": "Madrid", "Japan": "Tokyo", "Egypt": "Cairo", "Russia": "Moscow",
    "Austria": "Vienna", "Ireland": "Dublin", "Norway": "Oslo", "Peru": "Lima",
    "India": "Delhi", "Korea": "Seoul", "Greece": "Athens",
}


def toyworld_facts() -> dict[str, str]:
    """The fixed synthetic fact base: entity -> home city (deterministic, no RNG)."""
    return {e: CITIES[(7 * i + 3) % len(CITIES)] for i, e in enumerate(ENTITIES)}


# Items and containers for the in-context multi-hop reasoning subtask.
ITEMS = ["key", "coin", "apple", "card", "ticket", "watch", "phone", "map", "stone", "toy"]
CONTAINERS = ["box", "bag", "case", "jar", "drawer", "basket", "chest", "crate", "pot", "tin"]

# Words for induction sequences.
INDUCTION_WORDS = sorted(set(
    ["apple", "river", "stone", "cloud", "tiger", "piano", "lemon", "horse", "candle", "mirror",
     "forest", "window", "rocket", "garden", "pepper", "violin", "castle", "bridge", "planet",
     "rabbit", "silver", "winter", "summer", "ocean", "desert", "island", "valley", "meadow",
     "thunder", "shadow"]
))

NUMBERS = [str(i) for i in range(100)]
YEARS_2D = [f"{i:02d}" for i in range(100)]
CENTURIES = ["11", "12", "13", "14", "15", "16", "17", "18", "19"]
NOUNS_GT = ["war", "reign", "journey", "drought", "project", "strike", "siege", "voyage"]
