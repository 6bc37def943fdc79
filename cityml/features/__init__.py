"""The feature stage: the feature tables built from trips, the Feast store (its ASOF offline store), request-time
features and online reads shared by training and serving."""
